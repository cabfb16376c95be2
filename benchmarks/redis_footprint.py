"""Redis online store: memory per user and per item, and materialization speed, on a data root.

Copies the data root's Feast folder (the registry is rewritten by a materialization; features
and validated data are hard-linked, read only), starts Debian's ``redis-server`` on a free
loopback port without persistence, runs the real ``recsys materialize`` into it, and prints one
JSON object: seconds, rows/s, Redis ``used_memory`` (beyond an empty server's), keys, and
``MEMORY USAGE`` of sampled user and item keys. ``docs/capacity.md`` scales these figures.

    .venv/bin/python benchmarks/redis_footprint.py --home /work/hm/home --out redis.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from data_plane import materialized_rows, run_stage

from recsys.core.reporting import emit_report

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SAMPLE = 2000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_copy(home: Path, to: Path) -> Path:
    """``home`` with its own Feast folder (registry and config: the SQLite online store, GBs at
    H&M's size, is left behind, since the run loads Redis); everything else hard-linked (read
    here, not written)."""
    to.mkdir(parents=True)
    for child in home.iterdir():
        if child.name == "feast":
            skip = shutil.ignore_patterns("online_store.db*")
            shutil.copytree(child, to / child.name, ignore=skip)
        elif child.is_dir():
            shutil.copytree(child, to / child.name, copy_function=os.link)
        else:
            os.link(child, to / child.name)
    return to


def sampled_usage(client: redis.Redis, keys: int) -> dict[str, Any]:
    """``MEMORY USAGE`` of sampled keys, split into user and item keys by the entity name that
    Feast's serialised entity key holds."""
    sizes: dict[str, list[int]] = {"user": [], "item": []}
    for _ in range(min(SAMPLE, keys)):
        key = client.randomkey()
        if key is None:
            break
        kind = "user" if b"user_id" in key else "item" if b"item_id" in key else None
        if kind:
            sizes[kind].append(int(client.memory_usage(key, samples=0) or 0))
    return {
        kind: {"sampled": len(v), "mean_bytes": round(sum(v) / len(v)) if v else None}
        for kind, v in sizes.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a materialized data root")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory(dir=args.home.parent) as tmp:
        home = private_copy(args.home, Path(tmp) / "home")
        server = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.2)
            empty = int(client.info("memory")["used_memory"])
            env = {**os.environ, "RECSYS_HOME": str(home), "TQDM_DISABLE": "1",
                   "RECSYS_FEAST__ONLINE_STORE": "redis",
                   "RECSYS_FEAST__REDIS_URL": f"redis://127.0.0.1:{port}/0"}  # fmt: skip
            stage = run_stage(["materialize"], env)
            output = stage.pop("output")
            print(output[-1500:], file=sys.stderr)
            rows = materialized_rows(output)
            if rows:
                stage |= {"rows": rows, "rows_per_s": round(rows / stage["seconds"])}
            memory = client.info("memory")
            keys = int(client.dbsize())
            used = int(memory["used_memory"]) - empty
            report = {
                "benchmark": "redis_footprint",
                "home": str(args.home),
                "materialize": stage,
                "keys": keys,
                "used_memory_bytes": used,
                "used_memory_gb": round(used / 1e9, 3),
                "bytes_per_key": round(used / keys) if keys else None,
                "used_memory_rss_gb": round(int(memory["used_memory_rss"]) / 1e9, 3),
                "keys_sampled": sampled_usage(client, keys),
            }
        finally:
            server.terminate()
            server.wait(30)
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
