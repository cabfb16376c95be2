"""POST /events throughput: acknowledged events per second, in batches, from several clients.

Every event is durable and applied once before its batch is answered (an fsynced, numbered log
line, then one fold-and-push of each user's online row; see ``serving/events.py``), so this is
the rate a shop can stream its clicks at. The API serves a copy of the data root (the events
must not stay in it), with rate limits off; each batch holds ``--batch`` events with an
``event_id`` for ten users, mostly views.

    RECSYS_HOME=var .venv/bin/python benchmarks/events_throughput.py --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from loadgen import HOST, ApiServer, LoadClient, catalogue, percentiles, serving_copy


async def closed_loop(port: int, items: list[str], batch: int, concurrency: int,
                      seconds: float) -> dict[str, Any]:  # fmt: skip
    """``concurrency`` clients posting batches back to back for ``seconds``."""
    client, rng, numbers = LoadClient(HOST, port), random.Random(0), itertools.count()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            n = next(numbers)
            kinds = rng.choices(["view", "add_to_cart", "purchase"], [0.8, 0.15, 0.05], k=batch)
            events = [{"event_id": f"bench-{n}-{i}", "user_id": f"bench-user-{n % 500}-{i % 10}",
                       "item_id": rng.choice(items), "event_type": kind}
                      for i, kind in enumerate(kinds)]  # fmt: skip
            t = time.perf_counter()
            status, _ = await client.request("POST", "/events", {"events": events})
            latencies.append((time.perf_counter() - t) * 1e3)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    client.close()
    acknowledged = statuses.get(200, 0) * batch
    return {"batch": batch, "concurrency": concurrency, "seconds": round(elapsed, 1),
            "events_per_s": round(acknowledged / elapsed, 1), "statuses": statuses,
            "batch_latency": percentiles(latencies)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()

    from recsys.core.reporting import emit_report
    from recsys.core.settings import get_settings

    home = get_settings().home
    report: dict[str, Any] = {
        "benchmark": "events_throughput", "home": str(home), "workers": args.workers,
        "load_average_start": os.getloadavg(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        copy = serving_copy(home, Path(tmp) / "home")
        items = catalogue(copy)
        with ApiServer(copy, workers=args.workers) as server:
            asyncio.run(closed_loop(server.port, items, args.batch, 1, 3))  # warm-up
            report["throughput"] = asyncio.run(
                closed_loop(server.port, items, args.batch, args.concurrency, args.seconds)
            )
    report["load_average_end"] = os.getloadavg()
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
