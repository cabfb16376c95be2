"""Data-plane benchmark: import, validate, features and materialize at 1M and 10M interactions.

Each stage runs as the real ``recsys`` command in its own process (as a user runs it), on a
shop generated beforehand; the script samples the process tree's resident memory while it
runs and prints one JSON object: seconds and peak memory per stage, and materialize rows/s.

    .venv/bin/python benchmarks/data_plane.py --sizes 1000000 10000000 --out bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

from recsys.core.reporting import emit_report

RECSYS = Path(sys.executable).with_name("recsys")
# Interactions per generated user over 90 days with the default generator (measured: ~63).
EVENTS_PER_USER = 63


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_measured(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> dict[str, Any]:
    """Run ``command`` while sampling its process tree's resident memory every 0.2 s: its
    return code, seconds, peak tree RSS (bytes) and output (stdout and stderr together)."""
    started = time.perf_counter()
    child = psutil.Popen(  # a subprocess.Popen that is also a psutil.Process
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, _tree_rss(child))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    done.set()
    sampler.join()
    return {"returncode": child.returncode, "seconds": time.perf_counter() - started,
            "peak_rss": peak, "output": output}  # fmt: skip


def run_stage(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``recsys *args``; return seconds, peak tree RSS (GB) and the tail of its output."""
    run = run_measured([str(RECSYS), *args], env)
    if run["returncode"] != 0:
        raise RuntimeError(f"recsys {' '.join(args)} failed:\n{run['output'][-3000:]}")
    return {"seconds": round(run["seconds"], 2), "peak_rss_gb": round(run["peak_rss"] / 1e9, 3),
            "output": run["output"]}  # fmt: skip


def bench_size(interactions: int, work: Path) -> dict[str, Any]:
    users = max(interactions // EVENTS_PER_USER, 100)
    items = min(max(users // 5, 500), 30_000)
    source, home = work / f"source_{interactions}", work / f"home_{interactions}"
    env = {**os.environ, "RECSYS_HOME": str(source), "TQDM_DISABLE": "1"}
    size = [f"--users={users}", f"--items={items}", "--days=90", "--end-date=2026-11-01"]
    stages: dict[str, Any] = {"synth": run_stage(["data", "synth", *size], env)}
    raw = source / "data" / "raw"
    env["RECSYS_HOME"] = str(home)
    stages["import"] = run_stage(
        ["data", "import", "generic", f"--interactions={raw / 'interactions.parquet'}",
         f"--items={raw / 'items.parquet'}", f"--users={raw / 'users.parquet'}"],
        env,
    )  # fmt: skip
    for stage in ("validate", "features", "materialize"):
        stages[stage] = run_stage([stage], env)
    rows = materialized_rows(stages["materialize"]["output"])
    result: dict[str, Any] = {
        "interactions": pq.ParquetFile(raw / "interactions.parquet").metadata.num_rows,
        "users": users,
        "items": items,
        "stages": {k: {m: v[m] for m in ("seconds", "peak_rss_gb")} for k, v in stages.items()},
    }
    if rows:
        result["materialize_rows"] = rows
        result["materialize_rows_per_s"] = round(rows / stages["materialize"]["seconds"])
    return result


def materialized_rows(output: str) -> int | None:
    for line in output.splitlines():
        words = line.split()
        if "rows" in words and "from" in words:
            return int(words[0].replace(",", ""))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        memory_gb = round(psutil.virtual_memory().total / 1e9, 1)
        report = {
            "benchmark": "data_plane",
            "machine": {"cpus": os.cpu_count(), "memory_gb": memory_gb},
            "runs": [bench_size(n, Path(tmp)) for n in args.sizes],
        }
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
