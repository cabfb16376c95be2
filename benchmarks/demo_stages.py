"""Seconds of each `recsys demo` stage, this checkout against a git ref, in one sitting.

Each side runs ``recsys demo --no-serve`` on a fresh data root with its output piped (as CI and
a log file see it), one after the other on the same machine: absolute times differ 2-3x
between machines of one kind, so the ratio of the two runs is the number to read. The ref is
checked out in a temporary git worktree and run with this checkout's ``.venv``.

    .venv/bin/python benchmarks/demo_stages.py --base f2b9eb3

Prints one JSON object (stage seconds per side, totals, the ratio, the load average around
each run) and writes it to ``benchmarks/results/demo_stages.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from checkouts import REPO, worktrees

RESULTS = REPO / "benchmarks" / "results" / "demo_stages.json"
STAGE = re.compile(r"^✓ (?P<name>.+?) in (?P<seconds>[\d.]+)s$")
TOTAL = re.compile(r"all stages in (?P<seconds>[\d.]+)s")


def run_demo(checkout: Path, home: Path, log: Path) -> dict:
    """One ``recsys demo --no-serve`` from ``checkout`` into ``home``: its stage seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(RECSYS_HOME=str(home), PYTHONPATH=str(checkout))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "recsys.cli", "demo", "--no-serve"], cwd=checkout,
                       env=env, stdout=out, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    wall = time.perf_counter() - started
    stages: dict[str, float] = {}
    total = None
    for line in log.read_text().splitlines():
        if match := STAGE.match(line.strip()):
            stages[match["name"]] = float(match["seconds"])
        elif match := TOTAL.search(line):
            total = float(match["seconds"])
    return {"stages": stages, "all_stages_s": total, "wall_s": round(wall, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "output_lines": len(log.read_text().splitlines())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git ref to compare with (default HEAD)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="also write the JSON here")
    args = parser.parse_args()
    sha = subprocess.run(["git", "rev-parse", args.base], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    result: dict = {"created_at": datetime.now(UTC).isoformat(), "base": sha,
                    "cpus": os.cpu_count()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="demo_stages_") as tmp, \
            worktrees({"base": sha}, Path(tmp)) as trees:  # fmt: skip
        root = Path(tmp)
        for side, checkout in (("base", trees["base"]), ("current", REPO)):
            print(f"running the demo of {side} ...", file=sys.stderr)
            result[side] = run_demo(checkout, root / f"home_{side}", root / f"{side}.log")
            shutil.rmtree(root / f"home_{side}", ignore_errors=True)
    base, current = result["base"]["all_stages_s"], result["current"]["all_stages_s"]
    result["ratio_current_over_base"] = round(current / base, 3) if base and current else None
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
