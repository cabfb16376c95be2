"""Latency of both vector store backends on random data, printed as one JSON object.

Builds the edge store in a temporary folder and the qdrant store in qdrant-client's memory (or
on a server with ``--qdrant-url``), then times plain top-10, category-filtered top-10 and top-10
excluding 100 ids, plus edge build and reload times and recall@10 against numpy's exact search.
Random vectors are the hardest case for HNSW, so recall on real embeddings is higher.

    python benchmarks/vector_search.py --items 30000 --dim 64 --queries 200

qdrant-client's local mode is a brute-force scan in Python: at 30k items its filtered searches
take hundreds of milliseconds each; use ``--skip-qdrant`` or a server for large runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.core.vectorstore import (  # noqa: E402
    EdgeVectorStore,
    ItemPoint,
    QdrantServerVectorStore,
    SearchFilter,
    VectorStore,
)

N_CATEGORIES = 20
K = 10


def make_data(items: int, dim: int, queries: int, seed: int) -> dict[str, Any]:
    """Random unit item vectors, a category per item, and raw query vectors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(items, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {
        "x": x,
        "category": rng.integers(N_CATEGORIES, size=items),
        "price": rng.uniform(0, 100, size=items),
        "queries": rng.normal(size=(queries, dim)).astype(np.float32),
        "excluded": [
            frozenset(rng.choice(items, 100, replace=False).tolist()) for _ in range(queries)
        ],
    }


def points(data: dict[str, Any]) -> list[ItemPoint]:
    return [
        ItemPoint(i, vec, {"category": f"c{data['category'][i]}", "price": float(data["price"][i])})
        for i, vec in enumerate(data["x"])
    ]


def build(store: VectorStore, data: dict[str, Any]) -> float:
    """(Re)create, load and index the store's collection; returns seconds."""
    start = time.perf_counter()
    dim = data["x"].shape[1]
    store.create_collection(store.name, dim, ["category"], ["price"], replace=True)
    store.upsert(points(data))
    store.finalize()
    return time.perf_counter() - start


def timed(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    """p50/p99 latency in ms of ``fn(i)`` over ``n`` calls, after a warm-up pass.

    The warm-up (up to 50 calls) pages the memory-mapped graph and payload in, so the numbers
    describe a serving process in steady state rather than its first requests.
    """
    for i in range(min(n, 50)):
        fn(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
    }


def recall_at_k(store: VectorStore, data: dict[str, Any], n: int) -> float:
    """Mean overlap of the store's top-10 with numpy's exact cosine top-10."""
    x, found = data["x"], 0
    for q in data["queries"][:n]:
        truth = set(np.argsort(-(x @ q))[:K].tolist())
        found += len(truth & {h.id for h in store.search(q, K)})
    return round(found / (K * n), 4)


def measure(store: VectorStore, data: dict[str, Any], n: int) -> dict[str, Any]:
    queries, excluded = data["queries"], data["excluded"]
    category = SearchFilter(equals={"category": "c1"})
    return {
        "plain_top10": timed(lambda i: store.search(queries[i], K), n),
        "category_top10": timed(lambda i: store.search(queries[i], K, category), n),
        "exclude100_top10": timed(
            lambda i: store.search(queries[i], K, SearchFilter(exclude_ids=excluded[i])), n
        ),
        "recall_at_10": recall_at_k(store, data, min(n, 100)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hnsw-ef", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qdrant-url", default=None, help="Qdrant server; default :memory:")
    parser.add_argument(
        "--qdrant-queries", type=int, help="queries for the qdrant backend (default: --queries)"
    )
    parser.add_argument("--skip-qdrant", action="store_true")
    args = parser.parse_args(argv)

    data = make_data(args.items, args.dim, args.queries, args.seed)
    result: dict[str, Any] = {
        "items": args.items,
        "dim": args.dim,
        "queries": args.queries,
        "hnsw_ef": args.hnsw_ef,
        "categories": N_CATEGORIES,
    }

    with tempfile.TemporaryDirectory(prefix="vector_bench_") as tmp:
        path = Path(tmp) / "items"
        edge = EdgeVectorStore(path, hnsw_ef=args.hnsw_ef)
        build_s = build(edge, data)
        edge.close()
        start = time.perf_counter()
        edge = EdgeVectorStore(path, hnsw_ef=args.hnsw_ef)
        edge.search(data["queries"][0], K)  # opening is lazy: include the first query
        reload_s = time.perf_counter() - start
        result["edge"] = {
            "build_s": round(build_s, 3),
            "reload_s": round(reload_s, 3),
            **measure(edge, data, args.queries),
            "health": edge.health(),
        }
        edge.close()

    if not args.skip_qdrant:
        qdrant = QdrantServerVectorStore(  # location is ignored when a url is given
            "bench_items", url=args.qdrant_url, location=":memory:", hnsw_ef=args.hnsw_ef
        )
        build_s = build(qdrant, data)
        n = args.qdrant_queries or args.queries
        result["qdrant"] = {
            "mode": args.qdrant_url or ":memory: (brute force)",
            "build_s": round(build_s, 3),
            "queries": n,
            **measure(qdrant, data, n),
        }
        qdrant.close()

    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
