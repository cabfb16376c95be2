"""Serving benchmark: API latency at a fixed request rate, saturation throughput, and the floor.

Needs a data root where the pipeline has run (`recsys demo --no-serve`). The floor (a bare
Feast online read plus a bare vector search with the same exclusion filter, for the same users)
is measured in this process first; then the API is started as `recsys serve` in its own process
and loaded from this one over loopback with a small asyncio HTTP client: an open loop at `--rate`
requests/s, then a closed loop with `--concurrency` requests in flight for the saturation
throughput, then an open loop at half that throughput (its tail: p99 over p50). Latency is
reported as the client saw it and as the server timed it (``Server-Timing``).

    RECSYS_HOME=var .venv/bin/python benchmarks/serving_latency.py --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import ApiServer, LoadClient, percentiles


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
            rec.online.store.get_online_features(
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
            "feast_online_read": percentiles(feature_ms),
            "vector_search": percentiles(search_ms),
            "floor_p50_ms": round(float(both), 3),
            "in_process_full_path": percentiles(total_ms),
            "in_process_stage_p50_ms": {s: percentiles(ms)["p50_ms"] for s, ms in stages.items()},
        }
    finally:
        rec.close()


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
    return {"rate_rps": rate, **percentiles(latencies), "errors": errors,
            "server_side": percentiles(server)}  # fmt: skip


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
            **percentiles(latencies)}  # fmt: skip


#: The options that set the load of a run (``serving_ab.py`` passes them on to every round).
LOAD_OPTIONS = ("rate", "seconds", "concurrency", "users", "workers")


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rate --seconds --concurrency --users --workers`` (:data:`LOAD_OPTIONS`)."""
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser)
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
    with ApiServer(settings.home, workers=args.workers) as server:
        port = server.port
        asyncio.run(open_loop(host, port, users, args.rate, 3))  # warm-up
        report["api_at_rate"] = asyncio.run(open_loop(host, port, users, args.rate, args.seconds))
        report["saturation"] = asyncio.run(
            closed_loop(host, port, users, args.concurrency, args.seconds)
        )
        # the tail at half of that throughput: a server with headroom answers evenly
        half_rate = round(report["saturation"]["throughput_rps"] / 2, 1)
        report["half_saturation"] = asyncio.run(
            open_loop(host, port, users, half_rate, args.seconds)
        )
    report["api_p50_over_floor"] = round(
        report["api_at_rate"]["p50_ms"] / report["floor"]["floor_p50_ms"], 2
    )
    report["server_p50_over_floor"] = round(
        report["api_at_rate"]["server_side"]["p50_ms"] / report["floor"]["floor_p50_ms"], 2
    )
    tail = report["half_saturation"]
    report["half_saturation_p99_over_p50"] = round(tail["p99_ms"] / tail["p50_ms"], 2)
    report["load_average_end"] = os.getloadavg()
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
