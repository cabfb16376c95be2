"""Seconds and peak memory of ``recsys train``, this checkout against a git ref, in one sitting.

Both sides train on copies of one prepared data root (``recsys data import``, ``validate``,
``features``, ``materialize`` and ``embed`` done), one after the other on the same machine,
each as its own ``python -m recsys.cli train`` process: absolute times differ 2-3x between
machines of one kind, so the ratio of the two runs is the number to read. The ref is checked
out in a temporary git worktree and run with this checkout's ``.venv`` (as is ``--this REF``,
else this side is the working tree); ``--rounds 2`` alternates the sides (base, this, this,
base) and keeps each side's fastest.

    .venv/bin/python benchmarks/train_time.py --home /tmp/asos --base 4b4a775 \\
        --out benchmarks/results/train_time_asos.json

Prints one JSON object: per side the wall seconds, the peak resident memory of the process
tree, the timed lines ``recsys train`` printed (each phase's seconds) and the load average
around the run; then the ratio this / base.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from checkouts import REPO, short_ref, working_tree_dirty, worktrees
from data_plane import run_measured

TIMED = re.compile(r"\((?P<seconds>[\d.]+)s\)$|in (?P<total>[\d.]+)s$")


def train_once(checkout: Path, home: Path, log: Path) -> dict[str, Any]:
    """One ``recsys train`` from ``checkout`` on ``home``: seconds, peak memory, timed lines
    (its whole output goes to ``log``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(RECSYS_HOME=str(home), PYTHONPATH=str(checkout), TQDM_DISABLE="1")
    load_before = os.getloadavg()[0]
    run = run_measured([sys.executable, "-m", "recsys.cli", "train"], env, cwd=checkout)
    text = run["output"]
    log.write_text(text)
    if run["returncode"] != 0:
        raise RuntimeError(f"recsys train from {checkout} failed:\n{text[-3000:]}")
    timed = [line.strip() for line in text.splitlines() if TIMED.search(line.strip())]
    return {"wall_s": round(run["seconds"], 1), "peak_rss_gb": round(run["peak_rss"] / 1e9, 2),
            "timed": timed, "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="prepared data root")
    parser.add_argument("--base", default="HEAD", help="git ref to compare with (default HEAD)")
    parser.add_argument("--this", help="git ref of this side (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=1, help="1: base then this; 2: alternate")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    base, this = short_ref(args.base), short_ref(args.this or "HEAD")
    dirty = args.this is None and working_tree_dirty()
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    refs = {"base": base, **({"this": this} if args.this else {})}
    with tempfile.TemporaryDirectory(prefix="train_time_") as tmp, \
            worktrees(refs, Path(tmp)) as trees:  # fmt: skip
        work = Path(tmp)
        order = ["base", "this"] if args.rounds == 1 else ["base", "this", "this", "base"]
        for i, side in enumerate(order):
            home = work / f"home_{i}"
            shutil.copytree(args.home, home, symlinks=True)
            checkout = trees.get(side, REPO)
            print(f"round {i + 1}/{len(order)}: {side} ...", file=sys.stderr, flush=True)
            runs[side].append(train_once(checkout, home, work / f"train_{i}.log"))
            shutil.rmtree(home)
    best = {side: min(r, key=lambda run: run["wall_s"]) for side, r in runs.items()}
    result = {
        "created_at": datetime.now(UTC).isoformat(),
        "home": str(args.home),
        "base": base,
        "this": this + ("+changes" if dirty else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        },
        "runs": runs,
        "ratio_this_over_base": round(best["this"]["wall_s"] / best["base"]["wall_s"], 3),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
