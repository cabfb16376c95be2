"""Soak: minutes of mixed load at a share of the measured saturation; errors, latency and memory.

The mix is what a shop sends: user recommendations, anonymous session recommendations, similar
items and event batches (10 events, each with an ``event_id``). The saturation of that mix is
measured first (a closed loop), then an open loop holds ``--load`` of it (80% by default) for
``--minutes``, with p50/p99 and errors per minute and the server's resident memory at the start
and the end. The API serves a copy of the data root (the events must not stay in it).

    RECSYS_HOME=var .venv/bin/python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from loadgen import HOST, ApiServer, LoadClient, catalogue, percentiles, serving_copy

Request = tuple[str, str, Any]


def request_mix(users: list[str], items: list[str], seed: int = 0) -> Callable[[], Request]:
    """A generator of (method, path, body): 55% user, 15% session, 15% similar, 15% events."""
    rng, numbers = random.Random(seed), itertools.count()

    def user() -> Request:
        return "GET", f"/users/{rng.choice(users)}/recommendations?k=10", None

    def session() -> Request:
        return "POST", "/recommendations", {"session_items": rng.sample(items, 3), "k": 10}

    def similar() -> Request:
        return "GET", f"/items/{rng.choice(items)}/similar?k=10", None

    def events() -> Request:
        n = next(numbers)
        batch = [
            {"event_id": f"soak-{seed}-{n}-{i}", "user_id": rng.choice(users),
             "item_id": rng.choice(items), "event_type": "view"}
            for i in range(10)
        ]  # fmt: skip
        return "POST", "/events", {"events": batch}

    kinds = [user, session, similar, events]
    return lambda: rng.choices(kinds, [0.55, 0.15, 0.15, 0.15])[0]()


async def saturation(port: int, next_request: Callable[[], Request], concurrency: int,
                     seconds: float) -> dict[str, Any]:  # fmt: skip
    client, answered = LoadClient(HOST, port), 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal answered
        while time.perf_counter() < deadline:
            await client.request(*next_request())
            answered += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    client.close()
    return {"concurrency": concurrency,
            "throughput_rps": round(answered / (time.perf_counter() - started), 1)}  # fmt: skip


async def soak(port: int, next_request: Callable[[], Request], rate: float, minutes: float,
               server: psutil.Process, connections: int) -> list[dict[str, Any]]:  # fmt: skip
    """Requests on a fixed schedule for ``minutes``; one summary per minute.

    At most ``connections`` are open, as a shop backend's pool would have: a request waits for
    one, and its latency counts from when it was due, so queueing is measured, not hidden.
    Without the cap a slow second piles up hundreds of new connections on the server.
    """
    client, pool = LoadClient(HOST, port), asyncio.Semaphore(connections)
    minute_stats: list[dict[str, Any]] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task] = set()

    async def one(method: str, path: str, body: Any) -> None:
        t = time.perf_counter()
        try:
            async with pool:
                status, _ = await client.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            status = type(exc).__name__
        latencies.append((time.perf_counter() - t) * 1e3)
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1

    start = time.perf_counter()
    for minute in range(int(minutes)):
        latencies, errors = [], {}
        for i in range(int(rate * 60)):
            delay = start + minute * 60 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(*next_request()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, start + (minute + 1) * 60 - time.perf_counter()))
        minute_stats.append({"minute": minute + 1, **percentiles(latencies), "errors": errors,
                             "rss_mb": round(_rss(server) / 2**20, 1)})  # fmt: skip
        print(minute_stats[-1], flush=True)
    await asyncio.gather(*tasks)
    client.close()
    return minute_stats


def _rss(server: psutil.Process) -> int:
    """Resident memory of the server and its worker processes."""
    procs = [server, *server.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.8, help="share of the saturation")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32, help="the soak's pool size")
    parser.add_argument("--saturation-seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()

    import duckdb

    from recsys.core.reporting import emit_report
    from recsys.core.settings import get_settings

    home = get_settings().home
    report: dict[str, Any] = {"benchmark": "soak", "home": str(home), "workers": args.workers,
                              "load_average_start": os.getloadavg()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        copy = serving_copy(home, Path(tmp) / "home")
        items = catalogue(copy)
        path = copy / "data" / "features" / "user_features.parquet"
        with duckdb.connect() as con:
            ids = [r[0] for r in con.execute(f"SELECT DISTINCT user_id FROM read_parquet('{path}')")
                   .fetchall()]  # fmt: skip
        users = random.Random(0).sample(ids, min(args.users, len(ids)))
        with ApiServer(copy, workers=args.workers) as server:
            process = psutil.Process(server.proc.pid)
            warm = request_mix(users, items, seed=1)
            asyncio.run(saturation(server.port, warm, args.concurrency, 3))  # warm-up
            report["saturation"] = asyncio.run(saturation(
                server.port, warm, args.concurrency, args.saturation_seconds))  # fmt: skip
            rate = round(args.load * report["saturation"]["throughput_rps"], 1)
            report["soak"] = {"load": args.load, "rate_rps": rate, "minutes": args.minutes,
                              "connections": args.connections,
                              "rss_mb_start": round(_rss(process) / 2**20, 1)}  # fmt: skip
            per_minute = asyncio.run(
                soak(
                    server.port,
                    request_mix(users, items, seed=2),
                    rate,
                    args.minutes,
                    process,
                    args.connections,
                )  # fmt: skip
            )
            report["soak"]["rss_mb_end"] = round(_rss(process) / 2**20, 1)
            report["soak"]["per_minute"] = per_minute
            report["soak"]["errors"] = sum(sum(m["errors"].values()) for m in per_minute)
    report["load_average_end"] = os.getloadavg()
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
