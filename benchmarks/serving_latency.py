"""Serving benchmark: API latency at a fixed request rate, saturation throughput, and the floor.

Needs a data root where the pipeline has run (`recsys demo --no-serve`). The floor (a bare
Feast online read plus a bare vector search with the same exclusion filter, for the same users)
is measured in this process first; then the API is started as `recsys serve` in its own process
and loaded from this one over loopback with a small asyncio HTTP client: an open loop at `--rate`
requests/s, then a closed loop with `--concurrency` requests in flight for the saturation
throughput. Latency is reported as the client saw it and as the server timed it
(``Server-Timing``).

    RECSYS_HOME=var .venv/bin/python benchmarks/serving_latency.py --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

RECSYS = Path(sys.executable).with_name("recsys")


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return {"n": 0}
    return {"n": len(a), **{f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)}}


def floor(users: list[str]) -> dict[str, Any]:
    """Bare Feast online read + bare vector search (same exclusion) per user, in-process."""
    import torch

    from recsys.core.settings import get_settings
    from recsys.core.vectorstore import SearchFilter
    from serving.recommender import Recommender

    torch.set_num_threads(1)
    rec = Recommender(get_settings())
    try:
        feature_ms, search_ms, vectors = [], [], {}
        for u in users:  # vectors first, so the search loop times only the search
            f = rec.user_features(u)
            if f is None:
                continue
            vec = rec.pipeline.user_vector({k: [v] for k, v in f.items()})
            exclude = frozenset(int(i) for i in rec.items.indices(f["purchased_items"]) if i > 0)
            vectors[u] = (vec, exclude)
        for u in users:
            t = time.perf_counter()
            rec.feature_store.get_online_features(
                features=["user_features:purchased_items"], entity_rows=[{"user_id": u}]
            )
            feature_ms.append((time.perf_counter() - t) * 1e3)
            if u in vectors:
                vec, exclude = vectors[u]
                t = time.perf_counter()
                rec.vectors.search(vec, 10, SearchFilter(exclude_ids=exclude))
                search_ms.append((time.perf_counter() - t) * 1e3)
        both = np.percentile(feature_ms, 50) + np.percentile(search_ms, 50)
        # the full path in-process, per stage: where the API's time goes besides HTTP
        stages: dict[str, list[float]] = {}
        total_ms = []
        for u in users:
            t = time.perf_counter()
            answer = rec.recommend(u, 10)
            total_ms.append((time.perf_counter() - t) * 1e3)
            for stage, ms in answer.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
        return {
            "feast_online_read": _percentiles(feature_ms),
            "vector_search": _percentiles(search_ms),
            "floor_p50_ms": round(float(both), 3),
            "in_process_full_path": _percentiles(total_ms),
            "in_process_stage_p50_ms": {s: _percentiles(ms)["p50_ms"] for s, ms in stages.items()},
        }
    finally:
        rec.close()


class LoadClient:
    """A minimal HTTP/1.1 keep-alive GET client on asyncio streams, one connection per request
    in flight.

    httpx spends about a millisecond of CPU per request here, on the same two cores as the
    server, and that time lands in the measured latency; this client spends tens of
    microseconds. It also reads the server's own time from the ``Server-Timing`` header.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, float]:
        """(status, server milliseconds; NaN when the header is missing)."""
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        while self._idle:  # the server closes connections idle past its keep-alive timeout
            reader, writer = self._idle.pop()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        status, length, server_ms = int(head[9:12]), 0, float("nan")
        for line in head.split(b"\r\n")[1:]:
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


def _path(user: str) -> str:
    return f"/users/{user}/recommendations?k=10"


async def open_loop(host: str, port: int, users: list[str], rate: float,
                    seconds: float) -> dict[str, Any]:  # fmt: skip
    """Requests on a fixed schedule, whatever the answers' latency (no coordinated omission)."""
    latencies: list[float] = []
    server: list[float] = []
    errors = 0
    client = LoadClient(host, port)

    async def one(user: str) -> None:
        nonlocal errors
        t = time.perf_counter()
        status, server_ms = await client.get(_path(user))
        latencies.append((time.perf_counter() - t) * 1e3)
        server.append(server_ms)
        errors += status != 200

    tasks, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(users[i % len(users)])))
    await asyncio.gather(*tasks)
    client.close()
    return {"rate_rps": rate, **_percentiles(latencies), "errors": errors,
            "server_side": _percentiles(server)}  # fmt: skip


async def closed_loop(host: str, port: int, users: list[str], concurrency: int,
                      seconds: float) -> dict:  # fmt: skip
    latencies: list[float] = []  # one per answered request
    deadline = time.perf_counter() + seconds
    client = LoadClient(host, port)

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await client.get(_path(users[i % len(users)]))
            latencies.append((time.perf_counter() - t) * 1e3)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - started
    client.close()
    return {"concurrency": concurrency, "throughput_rps": round(len(latencies) / elapsed, 1),
            **_percentiles(latencies)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()

    import duckdb

    from recsys.core.reporting import emit_report
    from recsys.core.settings import get_settings

    settings = get_settings()
    path = settings.features_dir / "user_features.parquet"
    with duckdb.connect() as con:
        ids = [r[0] for r in con.execute(f"SELECT DISTINCT user_id FROM read_parquet('{path}')")
               .fetchall()]  # fmt: skip
    users = random.Random(0).sample(ids, min(args.users, len(ids)))
    report: dict[str, Any] = {
        "benchmark": "serving_latency", "users": len(users), "workers": args.workers,
        "home": str(settings.home), "load_average_start": os.getloadavg(),
    }  # fmt: skip
    report["floor"] = floor(users)

    host = "127.0.0.1"
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(RECSYS), "serve", "--host", host, "--port", str(port), "--workers", str(args.workers)],
        env={**os.environ, "RECSYS_HOME": str(settings.home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://{host}:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("the API did not become healthy within 120 s")
        asyncio.run(open_loop(host, port, users, args.rate, 3))  # warm-up
        report["api_at_rate"] = asyncio.run(open_loop(host, port, users, args.rate, args.seconds))
        report["saturation"] = asyncio.run(
            closed_loop(host, port, users, args.concurrency, args.seconds)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    report["api_p50_over_floor"] = round(
        report["api_at_rate"]["p50_ms"] / report["floor"]["floor_p50_ms"], 2
    )
    report["load_average_end"] = os.getloadavg()
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
