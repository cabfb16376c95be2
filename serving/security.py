"""Who may call which route, how often, and with how big a body.

The API sits on a shop's hot path and takes writes (``POST /events`` is fsynced to disk and
pushed to the online store), so the defaults assume that whatever can reach the port will try
everything. Keys are checked per route through FastAPI dependencies, which also puts them in
the OpenAPI schema; the body limit is an ASGI middleware, since it must act before a route reads
the body. See ``SECURITY.md`` for the threat model these measures answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.core.settings import ApiKey, ServeSettings

Access = Literal["read", "write", "admin"]

#: Error answers of guarded routes, for their OpenAPI entries.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or an unknown one (when the route needs one)."},
    403: {"description": "The API key lacks this route's scope."},
    429: {"description": "Too many requests from this client; Retry-After says when to retry."},
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "The request body is larger than serve.max_body_bytes."}
}


def hash_key(key: str) -> str:
    """The hex SHA-256 that settings store in place of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key (256 random bits, URL-safe) and its hash."""
    key = "rk_" + secrets.token_urlsafe(32)
    return key, hash_key(key)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(serve: ServeSettings, host: str) -> None:
    """Refuse to serve beyond loopback with every route open, unless told to on purpose."""
    if serve.api_keys or serve.allow_open_writes or is_loopback(host):
        return
    raise ValueError(
        f"serve.host {host!r} reaches beyond this machine and no API key is configured, so "
        "anyone reaching the port could post events: create one with `recsys api-key NAME` and "
        "set RECSYS_SERVE__API_KEYS, or set RECSYS_SERVE__ALLOW_OPEN_WRITES=true for a network "
        "that is guarded otherwise."
    )


class KeyRing:
    """The configured keys, matched by hash in constant time."""

    def __init__(self, keys: Mapping[str, ApiKey]) -> None:
        self._keys = [(name, bytes.fromhex(k.sha256), k.scopes) for name, k in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str) -> tuple[str, frozenset[str]] | None:
        """``(client name, scopes)`` of the key, or None. Every stored hash is compared, so
        the time taken says nothing about which key (or which prefix) came close."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, stored, scopes in self._keys:
            if hmac.compare_digest(digest, stored):
                found = (name, scopes)
        return found


class RateLimiter:
    """Token buckets per client: ``rate`` requests per second, bursts of ``2 * rate``.

    Clients seen least recently are forgotten past ``max_clients``, so that a flood of new
    addresses cannot grow memory without bound (a forgotten client starts with a full bucket).
    """

    def __init__(self, rate: float, max_clients: int = 10_000) -> None:
        self.rate = float(rate)
        self.burst = max(2.0 * self.rate, 1.0)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0 and one token taken when ``client`` may go on; else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key.")


class AccessControl:
    """Builds the per-route dependency that checks the key, its scope and the client's rate."""

    def __init__(self, serve: ServeSettings) -> None:
        self.keys = KeyRing(serve.api_keys)
        self.required: dict[str, bool] = {
            "read": bool(self.keys) and serve.require_key_for_reads,
            "write": bool(self.keys),
            "admin": bool(self.keys),
        }
        read, write = RateLimiter(serve.read_rate_per_s), RateLimiter(serve.write_rate_per_s)
        self.limits = {"read": read, "write": write, "admin": read}

    def __call__(self, access: Access) -> Callable[..., Awaitable[str]]:
        async def check(
            request: Request,
            bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
            header: Annotated[str | None, Depends(_header)],
        ) -> str:
            presented = header or (bearer.credentials if bearer is not None else None)
            client = request.client.host if request.client is not None else "unknown"
            if presented is not None and self.keys:
                found = self.keys.identify(presented)
                if found is None:
                    raise HTTPException(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
                client, scopes = found
                if access not in scopes:
                    raise HTTPException(403, f"API key {client!r} lacks the {access!r} scope")
            elif self.required[access]:
                raise HTTPException(
                    401,
                    f"this route needs an API key with the {access!r} scope "
                    "(Authorization: Bearer <key>, or X-API-Key)",
                    {"WWW-Authenticate": "Bearer"},
                )
            wait = self.limits[access].wait_s(f"{access}:{client}")
            if wait > 0:
                raise HTTPException(
                    429,
                    f"too many {access} requests from {client}: retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            return client

        return check


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 before they are buffered.

    A declared ``Content-Length`` is checked up front; a chunked body is counted as it arrives
    and stopped once over the limit (FastAPI turns the ``HTTPException`` raised from ``receive``
    into the 413 answer).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"request body larger than {self.max_bytes} bytes (serve.max_body_bytes)"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self._detail()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
