"""API keys, scopes, rate limits and the body limit, on a small app with the real guards."""

from __future__ import annotations

import time

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from recsys.core.settings import ApiKey, ServeSettings
from serving.security import (
    AccessControl,
    BodyLimitMiddleware,
    RateLimiter,
    check_exposure,
    hash_key,
    new_key,
)

pytestmark = pytest.mark.unit

WRITER, _ = new_key()
READER, _ = new_key()


def _app(**serve: object) -> TestClient:
    settings = ServeSettings(**serve)
    access = AccessControl(settings)
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.get("/read")
    def read(client: str = Depends(access("read"))) -> dict[str, str]:
        return {"client": client}

    @app.post("/write")
    async def write(request: Request, client: str = Depends(access("write"))) -> dict:
        return {"client": client, "bytes": len(await request.body())}

    @app.get("/admin")
    def admin(client: str = Depends(access("admin"))) -> dict[str, str]:
        return {"client": client}

    return TestClient(app)


KEYS = {
    "shop": ApiKey(sha256=hash_key(WRITER)),
    "dash": ApiKey(sha256=hash_key(READER), scopes=frozenset({"read", "admin"})),
}


def test_without_keys_every_route_is_open_and_only_loopback_may_serve() -> None:
    client = _app()
    assert client.post("/write", content=b"{}").json() == {"client": "testclient", "bytes": 2}
    assert client.get("/admin").status_code == 200
    check_exposure(ServeSettings(), "127.0.0.1")
    check_exposure(ServeSettings(), "::1")
    with pytest.raises(ValueError, match="recsys api-key"):
        check_exposure(ServeSettings(), "0.0.0.0")
    check_exposure(ServeSettings(allow_open_writes=True), "0.0.0.0")
    check_exposure(ServeSettings(api_keys=KEYS), "0.0.0.0")


def test_keys_are_checked_by_hash_and_scope() -> None:
    client = _app(api_keys=KEYS)
    assert client.get("/read").status_code == 200  # reads stay open unless asked
    assert client.post("/write").status_code == 401
    assert client.post("/write", headers={"X-API-Key": "rk_guess"}).status_code == 401
    ok = client.post("/write", headers={"Authorization": f"Bearer {WRITER}"})
    assert ok.status_code == 200 and ok.json()["client"] == "shop"
    denied = client.post("/write", headers={"X-API-Key": READER})
    assert denied.status_code == 403 and "'dash' lacks the 'write' scope" in denied.text
    assert client.get("/admin", headers={"X-API-Key": WRITER}).status_code == 403
    assert client.get("/admin", headers={"X-API-Key": READER}).json() == {"client": "dash"}
    strict = _app(api_keys=KEYS, require_key_for_reads=True)
    assert strict.get("/read").status_code == 401
    assert strict.get("/read", headers={"X-API-Key": WRITER}).json() == {"client": "shop"}


def test_rate_limits_per_client_answer_429_with_retry_after() -> None:
    client = _app(api_keys=KEYS, write_rate_per_s=5)
    codes = [client.post("/write", headers={"X-API-Key": WRITER}).status_code for _ in range(15)]
    assert codes[:10] == [200] * 10 and 429 in codes  # a burst of twice the rate, then 429
    limited = client.post("/write", headers={"X-API-Key": WRITER})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.get("/read").status_code == 200  # reads are not limited by default


def test_rate_limiter_refills_and_forgets_old_clients() -> None:
    limiter = RateLimiter(rate=10.0, max_clients=3)
    assert all(limiter.wait_s("a") == 0 for _ in range(20))
    assert 0 < limiter.wait_s("a") <= 0.1
    time.sleep(0.15)
    assert limiter.wait_s("a") == 0
    for name in "bcde":
        limiter.wait_s(name)
    assert len(limiter._buckets) == 3
    assert RateLimiter(rate=0).wait_s("x") == 0


def test_bodies_over_the_limit_are_refused_declared_or_chunked() -> None:
    client = _app(max_body_bytes=2048)
    assert client.post("/write", content=b"x" * 2048).json()["bytes"] == 2048
    declared = client.post("/write", content=b"x" * 2049)
    assert declared.status_code == 413 and "max_body_bytes" in declared.json()["detail"]

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    chunked = client.post("/write", content=chunks())
    assert chunked.status_code == 413
