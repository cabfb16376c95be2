"""Serving speed of this checkout against a git ref, in one sitting, rounds alternating.

One round is ``benchmarks/serving_latency.py`` (this checkout's client and floor measure) with
a side's code on ``PYTHONPATH``: the floor, the whole path in-process, the API at a fixed
rate, its saturation and the tail at half of it. A model run is the code's own (a ref may not
read the run folder of another), so each side serves its own data root, trained and indexed by
that side's code (``recsys train`` then ``recsys index`` from a worktree of the ref). Rounds
alternate base, this, this, base, base, this, ...: one round's saturation moves up to 1.5x from
the next on the same code here, so the summary is each side's median and the ratio of those.

    .venv/bin/python benchmarks/serving_ab.py --base 4b4a775 --base-home /data/asos_base \\
        --home /data/asos --rounds 3 --out benchmarks/results/serving_ab_asos.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkouts import REPO, short_ref, working_tree_dirty, worktrees
from serving_latency import LOAD_OPTIONS, add_load_arguments

LATENCY = Path(__file__).with_name("serving_latency.py")


def round_once(checkout: Path, home: Path, settings: dict[str, str], args: argparse.Namespace,
               out: Path) -> dict[str, Any]:  # fmt: skip
    """One ``serving_latency.py`` run of ``checkout``'s code on ``home``; its JSON report.

    The caller's ``RECSYS_*`` variables are left out: a side's settings are only ``settings``
    (those its run was trained with, e.g. a source turned off), so both sides are reproducible.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(settings, RECSYS_HOME=str(home), PYTHONPATH=str(checkout), TQDM_DISABLE="1")
    load = [arg for name in LOAD_OPTIONS for arg in (f"--{name}", str(getattr(args, name)))]
    command = [sys.executable, str(LATENCY), *load, "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"serving_latency.py with {checkout} on {home} failed:\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")  # fmt: skip
    return json.loads(out.read_text())


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The figures a round is compared on."""
    return {
        "floor_p50_ms": report["floor"]["floor_p50_ms"],
        "in_process_p50_ms": report["floor"]["in_process_full_path"]["p50_ms"],
        "server_p50_ms": report["api_at_rate"]["server_side"]["p50_ms"],
        "server_p50_over_floor": report["server_p50_over_floor"],
        "saturation_rps": report["saturation"]["throughput_rps"],
        "half_saturation_p99_over_p50": report["half_saturation_p99_over_p50"],
    }


def _setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a ``--*-env`` option, the key a ``RECSYS_*`` variable."""
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("RECSYS_"):
        raise SystemExit(f"--base-env/--this-env take RECSYS_KEY=VALUE, not {text!r}")
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git ref to compare with")
    parser.add_argument("--base-home", type=Path, required=True,
                        help="data root trained and indexed by the base's code")  # fmt: skip
    parser.add_argument("--home", type=Path, required=True,
                        help="data root trained and indexed by this side's code")  # fmt: skip
    parser.add_argument("--this", help="git ref of this side (default: the working tree)")
    for side in ("base", "this"):
        parser.add_argument(f"--{side}-env", action="append", default=[], metavar="KEY=VALUE",
                            help=f"a RECSYS_* setting of the {side} API (repeatable)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side (alternating)")
    add_load_arguments(parser)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    for home in (args.base_home, args.home):
        if not (home / "artifacts" / "current").is_file():
            raise SystemExit(f"{home} has no trained run (artifacts/current): run `recsys train` "
                             "and `recsys index` there with that side's code first")  # fmt: skip
    settings = {side: dict(_setting(kv) for kv in getattr(args, f"{side}_env"))
                for side in ("base", "this")}  # fmt: skip
    base, this = short_ref(args.base), short_ref(args.this or "HEAD")
    dirty = args.this is None and working_tree_dirty()
    refs = {"base": base, **({"this": this} if args.this else {})}
    homes = {"base": args.base_home, "this": args.home}
    order = [side for i in range(args.rounds)
             for side in (("base", "this") if i % 2 == 0 else ("this", "base"))]  # fmt: skip
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serving_ab_") as tmp, \
            worktrees(refs, Path(tmp)) as trees:  # fmt: skip
        for i, side in enumerate(order):
            print(f"round {i + 1}/{len(order)}: {side} ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            report = round_once(trees.get(side, REPO), homes[side], settings[side], args,
                                Path(tmp) / f"round_{i}.json")  # fmt: skip
            rounds.append({"side": side, "load_before": round(load, 2), **headline(report),
                           "report": report})  # fmt: skip
    keys = list(headline(rounds[0]["report"]))
    median = {
        side: {
            k: round(statistics.median(r[k] for r in rounds if r["side"] == side), 3) for k in keys
        }
        for side in ("base", "this")
    }
    result = {
        "benchmark": "serving_ab",
        "created_at": datetime.now(UTC).isoformat(),
        "base": base,
        "this": this + ("+changes" if dirty else ""),
        "homes": {side: str(home) for side, home in homes.items()},
        "settings": settings,
        "order": order,
        "median": median,
        "saturation_this_over_base": round(
            median["this"]["saturation_rps"] / median["base"]["saturation_rps"], 2
        ),
        "server_p50_this_over_base": round(
            median["this"]["server_p50_ms"] / median["base"]["server_p50_ms"], 2
        ),
        "rounds": rounds,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
