"""Every stage at H&M's size (31M interactions, 1.4M users, 105k items) on one machine.

Each stage runs as the real ``recsys`` command in its own process, as a user runs it, on a
shop generated beforehand with H&M's shape: synth, import (generic adapter), validate,
features, materialize, text embeddings, train, index, then ``recsys serve``: seconds and peak
memory (resident, process tree) per stage, and for serving the start-up, resident memory and
server-side latency of sequential recommendation requests.

The JSON is rewritten after every stage, so a run stopped half way keeps what it measured (each
stage's whole output goes to ``<workdir>/logs/<stage>.log``), and ``--from STAGE`` continues a
run in the same ``--workdir``:

    .venv/bin/python benchmarks/hm_scale.py --workdir /big/disk --out hm.json
    .venv/bin/python benchmarks/hm_scale.py --workdir /big/disk --out hm.json --from train

Generated users average ~0.7 events a day (views, carts and purchases), so 32 days of 1.4M
users give H&M's 31M rows (31 days gave 30.4M); the defaults below are that shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
from data_plane import run_stage
from loadgen import ApiServer, LoadClient, percentiles

from recsys.core.reporting import emit_report

STAGES = (
    "synth", "import", "validate", "features", "materialize", "embed", "train", "index", "serve",
)  # fmt: skip
SERVE_REQUESTS = 500


def stage_args(stage: str, args: argparse.Namespace, raw: Path) -> list[str]:
    """The ``recsys`` command line of one stage."""
    if stage == "synth":
        return ["data", "synth", f"--users={args.users}", f"--items={args.items}",
                f"--days={args.days}", "--end-date=2026-11-01"]  # fmt: skip
    if stage == "import":
        return ["data", "import", "generic", f"--interactions={raw / 'interactions.parquet'}",
                f"--items={raw / 'items.parquet'}", f"--users={raw / 'users.parquet'}"]  # fmt: skip
    if stage == "embed":
        return ["embed", "--kind=text"]
    return [stage]


def serve(home: Path) -> dict[str, Any]:
    """Start ``recsys serve`` on the data root; start-up seconds, resident memory and the
    server-side latency of sequential ``/recommendations`` for random known users."""
    import duckdb

    users_file = home / "data" / "validated" / "users.parquet"
    with duckdb.connect() as con:
        users = [
            r[0]
            for r in con.execute(
                f"SELECT user_id FROM read_parquet('{users_file}') USING SAMPLE 2000 ROWS"
            ).fetchall()
        ]
    started = time.perf_counter()
    with ApiServer(home) as api:
        startup = time.perf_counter() - started
        assert api.proc is not None
        server = psutil.Process(api.proc.pid)

        async def requests() -> list[float]:
            client, out = LoadClient("127.0.0.1", api.port), []
            rng = random.Random(0)
            for _ in range(SERVE_REQUESTS):
                status, ms = await client.get(f"/users/{rng.choice(users)}/recommendations?k=10")
                assert status == 200, status
                out.append(ms)
            client.close()
            return out

        latencies = asyncio.run(requests())
        rss = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])
    return {
        "startup_seconds": round(startup, 1),
        "rss_gb": round(rss / 1e9, 3),
        "server_ms": percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_400_000)
    parser.add_argument("--items", type=int, default=105_000)
    parser.add_argument("--days", type=int, default=32)
    parser.add_argument("--workdir", type=Path, required=True, help="data roots (kept)")
    parser.add_argument("--from", dest="start", choices=STAGES, default="synth")
    parser.add_argument("--to", dest="stop", choices=STAGES, default="serve")
    parser.add_argument("--out", type=Path, required=True, help="the JSON, after every stage")
    args = parser.parse_args()

    source, home = args.workdir / "source", args.workdir / "home"
    raw = source / "data" / "raw"
    report: dict[str, Any] = {
        "benchmark": "hm_scale",
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        },
        "shape": {"users": args.users, "items": args.items, "days": args.days},
        "stages": {},
    }
    if args.start != "synth" and args.out.is_file():
        report = json.loads(args.out.read_text())  # continue the run
    todo = STAGES[STAGES.index(args.start) : STAGES.index(args.stop) + 1]
    for stage in todo:
        env = {**os.environ, "RECSYS_HOME": str(source if stage == "synth" else home),
               "TQDM_DISABLE": "1"}  # fmt: skip
        print(f"{time.strftime('%H:%M:%S')} {stage} ...", file=sys.stderr, flush=True)
        if stage == "serve":
            result = serve(home)
        else:
            result = run_stage(stage_args(stage, args, raw), env)
            # the whole output stays in the workdir: its progress lines time each phase
            log_file = args.workdir / "logs" / f"{stage}.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            output = result.pop("output")
            log_file.write_text(output)
            print(output[-1500:] + f"\n(all of it: {log_file})", file=sys.stderr, flush=True)
        # what the stage ran with beyond the defaults (e.g. the Redis online store, epochs)
        overrides = {k: v for k, v in sorted(os.environ.items()) if k.startswith("RECSYS_")}
        report["stages"][stage] = result | ({"settings": overrides} if overrides else {})
        if stage == "synth":
            report["interactions"] = pq.ParquetFile(raw / "interactions.parquet").metadata.num_rows
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    emit_report(report, None)


if __name__ == "__main__":
    main()
