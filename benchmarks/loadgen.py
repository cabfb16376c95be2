"""What the API benchmarks share: the API in its own process, a lean HTTP client, percentiles.

The load comes from the benchmark's process over loopback, as a shop's backend would call the
API; the server runs as ``recsys serve`` so that nothing of the client shares its interpreter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

RECSYS = Path(sys.executable).with_name("recsys")
HOST = "127.0.0.1"


def percentiles(ms: list[float]) -> dict[str, float]:
    """Count, p50, p90 and p99 of latencies in milliseconds (NaNs ignored)."""
    a = np.asarray(ms, dtype=np.float64)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return {"n": 0}
    return {"n": len(a), **{f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)}}


def serving_copy(home: Path, to: Path) -> Path:
    """A copy of the data root with what serving reads and writes: a benchmark that posts
    events must not leave them in the shop's data root."""
    skip = shutil.ignore_patterns("ray_results", "reports", "cache", "events")
    return Path(shutil.copytree(home, to, ignore=skip))


def catalogue(home: Path) -> list[str]:
    """The item ids of the data root's catalogue, as validated."""
    import duckdb

    path = home / "data" / "validated" / "items.parquet"
    with duckdb.connect() as con:
        return [r[0] for r in con.execute(f"SELECT item_id FROM read_parquet('{path}')").fetchall()]


class ApiServer:
    """``recsys serve`` on a free loopback port for the ``with`` block; healthy on entry.

    Rate limits are off (``RECSYS_SERVE__*_RATE_PER_S=0``): a benchmark measures what the
    server can do, and its one client would otherwise be limited as one shop backend is.
    """

    def __init__(self, home: Path, workers: int = 1, **env: str) -> None:
        self.home, self.workers, self.env = home, workers, env
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ApiServer:
        env = {**os.environ, "RECSYS_HOME": str(self.home), "RECSYS_SERVE__WRITE_RATE_PER_S": "0",
               "RECSYS_SERVE__READ_RATE_PER_S": "0", **self.env}  # fmt: skip
        self.proc = subprocess.Popen(
            [str(RECSYS), "serve", "--host", HOST, "--port", str(self.port),
             "--workers", str(self.workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(240):
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("the API did not become healthy within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class LoadClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, one connection per request in
    flight.

    httpx spends about a millisecond of CPU per request here, on the same two cores as the
    server, and that time lands in the measured latency; this client spends tens of
    microseconds. It also reads the server's own time from the ``Server-Timing`` header.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, float]:
        """(status, server milliseconds; NaN when the header is missing)."""
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, float]:
        """``method path`` with ``body`` as JSON: (status, server milliseconds or NaN)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        request = (head + "\r\n").encode() + payload
        while self._idle:  # the server closes connections idle past its keep-alive timeout
            reader, writer = self._idle.pop()
            writer.write(request)
            try:
                answer = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
        status, length, server_ms = int(answer[9:12]), 0, float("nan")
        for line in answer.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"server-timing" and b"dur=" in value:
                server_ms = float(value.split(b"dur=")[1].split(b";")[0])
        await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status, server_ms

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
