"""The item-item source at a large catalogue: seconds and peak memory of its fit.

Fits the serving neighbours (``ItemNeighbors.fit``, top 200 a row) the way ``recsys train`` does
on all of a data root's validated purchases, once per ``--method``, each in its own process so
its peak resident memory is its own. ``auto`` at H&M's 105k items is ``ease_local`` (a dense
EASE would need 41 GB); dense EASE's quality against ``ease_local`` is in ``recsys evaluate``
(both are peers there).

    .venv/bin/python benchmarks/item_item_scale.py --home /work/hm/home \\
        --out benchmarks/results/item_item_scale_hm.json

Prints one JSON object and, with ``--out``, writes it there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from models.baselines import InteractionMatrix
from models.item_item import ItemNeighbors


def fit_once(home: str, method: str, support: int) -> dict[str, Any]:
    """One fit in this (child) process: its shape, seconds and peak memory."""
    path = Path(home) / "data" / "validated" / "interactions.parquet"
    frame = duckdb.sql(
        f"SELECT user_id, item_id FROM read_parquet('{path}') WHERE event_type = 'purchase'"
    ).df()
    matrix = InteractionMatrix.from_frame(frame).matrix
    binary = matrix.copy()
    binary.data[:] = 1.0
    gram_nnz = int((binary.T @ binary).nnz)
    del frame, binary
    started = time.perf_counter()
    neighbours = ItemNeighbors.fit(matrix, method, top_n=200, ease_support=support)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    rows = np.diff(neighbours.matrix.indptr)
    return {
        "method": method,
        "fitted": neighbours.method,
        "params": neighbours.params,
        "users": matrix.shape[0],
        "items": matrix.shape[1],
        "purchases": int(matrix.nnz),
        "gram_nonzeros": gram_nnz,
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "weights": int(neighbours.matrix.nnz),
        "items_with_neighbours": int((rows > 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="data root (validate done)")
    parser.add_argument("--method", action="append", help="auto (default), ease_local, cosine")
    parser.add_argument("--support", type=int, default=300, help="ease_local's partners")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    runs = []
    for method in args.method or ["auto"]:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            runs.append(pool.submit(fit_once, str(args.home), method, args.support).result())
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "created_at": datetime.now(UTC).isoformat(),
        "home": str(args.home),
        "cpus": os.cpu_count(),
        "load_after": round(os.getloadavg()[0], 2),
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
