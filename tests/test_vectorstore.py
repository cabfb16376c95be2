"""Both vector store backends against numpy's exact cosine search, and against each other.

The edge backend runs its real HNSW graph (small collections are indexed on purpose); the
qdrant backend runs qdrant-client's local mode (``:memory:``), which goes through the same client
calls as a server. Filters whose matching set is smaller than ``EXACT_BELOW`` are scanned exactly
by the engine, so on those both backends must return exactly numpy's ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys.core.settings import VectorStoreSettings
from recsys.core.vectorstore import (
    CollectionNotFoundError,
    EdgeVectorStore,
    ItemPoint,
    QdrantServerVectorStore,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    VectorStoreError,
    open_vector_store,
)
from recsys.core.vectorstore.base import EXACT_BELOW

REPO_ROOT = Path(__file__).resolve().parents[1]

N, DIM, K, N_QUERIES = 2_000, 16, 10, 30
CATEGORIES = np.array(["shoes", "dresses", "tops", "bags", "jeans"])
COLOURS = np.array(["red", "blue", "green", "black", "white", "pink", "grey", "beige"])
KEYWORDS, FLOATS, BOOLS = ("category", "colour"), ("price",), ("in_stock",)


class Data:
    """2,000 random unit vectors with a fashion-like payload, plus queries."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(N, DIM)).astype(np.float32)
        self.x = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.category = CATEGORIES[np.arange(N) % len(CATEGORIES)]
        self.colour = COLOURS[rng.integers(len(COLOURS), size=N)]
        self.price = np.round(rng.uniform(0, 100, size=N), 2)
        self.in_stock = rng.random(N) < 0.5
        # Queries are not normalised: the stores must score by cosine, not raw dot product.
        self.queries = rng.normal(size=(N_QUERIES, DIM)).astype(np.float32) * 3.0

        self.payloads = [
            {
                "category": str(self.category[i]),
                "colour": str(self.colour[i]),
                "price": float(self.price[i]),
                "in_stock": bool(self.in_stock[i]),
            }
            for i in range(N)
        ]

    def points(self) -> list[ItemPoint]:
        return [ItemPoint(i, self.x[i], self.payloads[i]) for i in range(N)]

    def mask(self, flt: SearchFilter | None) -> np.ndarray:
        """Which points pass ``flt``, evaluated independently of any backend."""
        keep = np.ones(N, dtype=bool)
        if flt is None:
            return keep
        for key, value in flt.equals.items():  # payload fields are attributes of the same name
            keep &= getattr(self, key) == value
        for key, values in flt.any_of.items():
            keep &= np.isin(getattr(self, key), list(values))
        for key, (low, high) in flt.ranges.items():
            if low is not None:
                keep &= getattr(self, key) >= low
            if high is not None:
                keep &= getattr(self, key) <= high
        keep[list(flt.exclude_ids)] = False
        return keep

    def exact(self, q: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[int]:
        """Numpy's exact cosine top-k ids among the points passing ``flt``."""
        scores = self.x.astype(np.float64) @ (q / np.linalg.norm(q))
        scores[~self.mask(flt)] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if np.isfinite(scores[i])]


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


def fresh(backend: str, tmp_path: Path, name: str = "items") -> VectorStore:
    """A store of either backend with nothing in it yet."""
    if backend == "edge":
        return EdgeVectorStore(tmp_path / name)
    return QdrantServerVectorStore(name, location=":memory:")


def build(store: VectorStore, data: Data) -> VectorStore:
    """A plain collection named like the store (an alias would lead to it the same way)."""
    store.create_collection(store.name, DIM, KEYWORDS, FLOATS, BOOLS)
    store.upsert(data.points(), batch_size=500)
    store.finalize()
    return store


@pytest.fixture(scope="module")
def stores(data: Data, tmp_path_factory) -> Iterator[dict[str, VectorStore]]:
    edge = build(fresh("edge", tmp_path_factory.mktemp("edge")), data)
    server = build(fresh("qdrant", tmp_path_factory.mktemp("qdrant")), data)
    yield {"edge": edge, "qdrant": server}
    edge.close()
    server.close()


@pytest.fixture(params=["edge", "qdrant"])
def store(request: pytest.FixtureRequest, stores: dict[str, VectorStore]) -> VectorStore:
    return stores[request.param]


# Filters small enough (< EXACT_BELOW matching points) to be searched exactly.
EXACT_FILTERS = {
    "equals_keyword": SearchFilter(equals={"category": "dresses"}),
    "equals_keyword_and_bool": SearchFilter(equals={"category": "tops", "in_stock": True}),
    "equals_false": SearchFilter(equals={"category": "bags", "in_stock": False}),
    "any_of": SearchFilter(any_of={"colour": ["red", "blue", "beige"]}),
    "range": SearchFilter(ranges={"price": (20.0, 40.0)}),
    "open_range": SearchFilter(ranges={"price": (None, 15.5)}),
    "combined": SearchFilter(
        equals={"category": "shoes"},
        any_of={"colour": ["black", "white", "grey", "pink"]},
        ranges={"price": (10.0, None)},
        exclude_ids=frozenset(range(0, N, 3)),
    ),
}
# Broad filters go through filtered HNSW on edge: checked for correctness and recall.
BROAD_FILTERS = {
    "in_stock": SearchFilter(equals={"in_stock": True}),
    "not_in_stock": SearchFilter(equals={"in_stock": False}),
    "any_of_wide": SearchFilter(any_of={"category": ["shoes", "tops", "jeans"]}),
}


def recall(store: VectorStore, data: Data, flt: SearchFilter | None = None) -> float:
    found = total = 0
    for q in data.queries:
        truth = set(data.exact(q, K, flt))
        found += len(truth & {h.id for h in store.search(q, K, flt)})
        total += len(truth)
    return found / total


def assert_valid_hits(store: VectorStore, data: Data, q: np.ndarray, flt: SearchFilter | None):
    """Hits are unique, pass the filter, are sorted and carry the true cosine and payload."""
    hits = store.search(q, K, flt)
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) == min(K, int(data.mask(flt).sum()))
    assert data.mask(flt)[ids].all(), "a hit does not pass the filter"
    scores = np.array([h.score for h in hits])
    assert np.all(np.diff(scores) <= 1e-6), "hits are not best-first"
    cosine = data.x[ids].astype(np.float64) @ (q / np.linalg.norm(q))
    np.testing.assert_allclose(scores, cosine, atol=1e-4)
    for h in hits:
        assert h.payload == data.payloads[h.id]
        assert h.payload["in_stock"] is bool(data.in_stock[h.id])  # a bool, not 0/1


# -- plain search ---------------------------------------------------------------------------


def test_top_k_matches_exact_cosine(store: VectorStore, data: Data) -> None:
    for q in data.queries[:5]:
        assert_valid_hits(store, data, q, None)
    r = recall(store, data)
    # Local mode is exact; edge walks its HNSW graph (2,000 points > EXACT_BELOW).
    assert r >= (0.9 if store.backend == "edge" else 1.0)


def test_search_without_payloads_finds_the_same_hits(store: VectorStore, data: Data) -> None:
    flt = SearchFilter(exclude_ids=frozenset({1, 2, 3}))
    for q in data.queries[:5]:
        full, bare = store.search(q, 20, flt), store.search(q, 20, flt, with_payload=False)
        assert [h.id for h in bare] == [h.id for h in full]
        assert np.allclose([h.score for h in bare], [h.score for h in full], atol=1e-6)
        assert all(h.payload == {} for h in bare) and all(h.payload for h in full)


def test_count_and_health(store: VectorStore) -> None:
    assert store.count() == N
    health = store.health()
    assert health["ok"] is True
    assert health["backend"] == store.backend
    assert health["points"] == N
    if store.backend == "edge":  # small collections are indexed with HNSW on purpose
        assert N > EXACT_BELOW and health["indexed_vectors"] == N


# -- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXACT_FILTERS))
def test_small_filters_are_exact(store: VectorStore, data: Data, name: str) -> None:
    flt = EXACT_FILTERS[name]
    assert 0 < data.mask(flt).sum() < EXACT_BELOW
    for q in data.queries[:3]:
        assert_valid_hits(store, data, q, flt)
    for q in data.queries:
        assert [h.id for h in store.search(q, K, flt)] == data.exact(q, K, flt)


@pytest.mark.parametrize("name", sorted(BROAD_FILTERS))
def test_broad_filters_are_honoured(store: VectorStore, data: Data, name: str) -> None:
    flt = BROAD_FILTERS[name]
    for q in data.queries[:3]:
        assert_valid_hits(store, data, q, flt)
    assert recall(store, data, flt) >= 0.9


def test_exclude_ids_removes_the_best_hits(store: VectorStore, data: Data) -> None:
    rng = np.random.default_rng(1)
    found = 0
    for q in data.queries:
        # Exclude the query's true top 5 plus 95 random ids: the worst case for a graph.
        top = data.exact(q, 5)
        excluded = frozenset(top) | frozenset(rng.choice(N, 95, replace=False).tolist())
        flt = SearchFilter(exclude_ids=excluded)
        hits = store.search(q, K, flt)
        assert len(hits) == K
        assert not excluded & {h.id for h in hits}
        found += len(set(data.exact(q, K, flt)) & {h.id for h in hits})
    assert found / (K * len(data.queries)) >= 0.9


def test_filter_matching_nothing(store: VectorStore, data: Data) -> None:
    q = data.queries[0]
    assert store.search(q, K, SearchFilter(equals={"category": "hats"})) == []
    assert store.search(q, K, SearchFilter(any_of={"colour": []})) == []
    assert store.search(q, K, SearchFilter(ranges={"price": (200.0, None)})) == []


def test_backends_agree(stores: dict[str, VectorStore], data: Data) -> None:
    edge, server = stores["edge"], stores["qdrant"]
    for flt in EXACT_FILTERS.values():
        for q in data.queries[:10]:
            a, b = edge.search(q, K, flt), server.search(q, K, flt)
            assert [h.id for h in a] == [h.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
            assert [h.payload for h in a] == [h.payload for h in b]


# -- life cycle -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_edge_reopens_from_disk_in_a_new_process(data: Data, tmp_path: Path) -> None:
    path = tmp_path / "items"
    store = build(EdgeVectorStore(path), data)
    flt = EXACT_FILTERS["combined"]
    before = [
        [(h.id, h.score) for h in store.search(q, K, f)]
        for f in (None, flt)
        for q in data.queries[:5]
    ]
    store.close()

    script = f"""
import json
from pathlib import Path
from recsys.core.vectorstore import EdgeVectorStore
from tests.test_vectorstore import EXACT_FILTERS, K, Data
store, queries = EdgeVectorStore(Path({str(path)!r})), Data().queries[:5]
out = [[(h.id, h.score) for h in store.search(q, K, f)]
       for f in (None, EXACT_FILTERS["combined"]) for q in queries]
print(json.dumps({{"hits": out, "count": store.count(), "health": store.health()}}))
store.close()
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["count"] == N
    assert result["health"]["ok"] and result["health"]["indexed_vectors"] == N
    assert [[tuple(h) for h in hits] for hits in result["hits"]] == before

    # The same object reopens lazily after close().
    assert [(h.id, h.score) for h in store.search(data.queries[0], K)] == before[0]
    store.close()


def test_edge_folder_is_locked_while_open(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "items")
    store.create_collection("items", DIM, KEYWORDS)
    with pytest.raises(VectorStoreError, match="open elsewhere"):
        EdgeVectorStore(tmp_path / "items").count()
    store.close()
    assert EdgeVectorStore(tmp_path / "items").count() == 0


@pytest.mark.parametrize("backend", ["edge", "qdrant"])
def test_upsert_replaces_and_replace_empties(backend: str, tmp_path: Path) -> None:
    store = fresh(backend, tmp_path)
    store.create_collection(store.name, 3, ["colour"], bool_fields=["flag"])
    store.upsert([ItemPoint(i, [1.0, i, 0.0], {"colour": "red", "flag": True}) for i in range(5)])
    store.upsert([ItemPoint(np.int64(2), np.array([0.0, 0.0, 1.0]), {"colour": "blue"})])
    store.finalize()
    assert store.count() == 5
    [hit] = store.search([0.0, 0.0, 5.0], 1)
    assert (hit.id, hit.payload) == (2, {"colour": "blue"})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    flagged = store.search([1, 0, 0], 10, SearchFilter(equals={"flag": True}))
    assert {h.id for h in flagged} == {0, 1, 3, 4}
    with pytest.raises(ValueError, match="3"):
        store.search([1.0, 0.0], 1)
    with pytest.raises(ValueError, match=">= 0"):
        store.upsert([ItemPoint(-1, [1.0, 0.0, 0.0], {})])
    store.create_collection(store.name, 3, replace=True)
    assert store.count() == 0
    store.close()


@pytest.mark.parametrize("backend", ["edge", "qdrant"])
def test_missing_collection_errors_name_the_place(backend: str, tmp_path: Path) -> None:
    store = fresh(backend, tmp_path, "nowhere")
    with pytest.raises(CollectionNotFoundError, match=r"nowhere.*recsys index"):
        store.search([1.0, 0.0], 1)
    with pytest.raises(CollectionNotFoundError):
        store.count()
    health = store.health()
    assert health["ok"] is False and health["points"] is None and "recsys index" in health["error"]


def test_edge_refuses_to_wipe_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(VectorStoreError, match="Refusing"):
        EdgeVectorStore(tmp_path).create_collection(tmp_path.name, 4)
    assert (tmp_path / "precious.txt").exists()


def test_search_filter_validation() -> None:
    with pytest.raises(TypeError, match="list"):
        SearchFilter(any_of={"colour": "red"})
    with pytest.raises(TypeError, match="ranges"):
        SearchFilter(equals={"price": 9.99})
    with pytest.raises(ValueError):
        SearchFilter(ranges={"price": (5.0, 1.0)})
    flt = SearchFilter(equals={"n": np.int64(3)}, exclude_ids=[np.int64(4), 5])  # type: ignore[arg-type]
    assert flt.equals == {"n": 3} and flt.exclude_ids == frozenset({4, 5})
    assert SearchFilter().is_empty() and not flt.is_empty()


def test_open_vector_store(tmp_path: Path) -> None:
    edge = open_vector_store(VectorStoreSettings(), tmp_path)
    assert isinstance(edge, EdgeVectorStore) and edge.path == tmp_path / "qdrant" / "items"
    other = open_vector_store(VectorStoreSettings(hnsw_ef=128), tmp_path, collection="items_v2")
    assert isinstance(other, EdgeVectorStore)
    assert other.path == tmp_path / "qdrant" / "items_v2" and other.hnsw_ef == 128

    with pytest.raises(VectorStoreConfigError, match="RECSYS_VECTOR_STORE__URL"):
        open_vector_store(VectorStoreSettings(type="qdrant"), tmp_path)
    server = open_vector_store(
        VectorStoreSettings(type="qdrant", url="http://localhost:6333"), tmp_path, read_only=True
    )
    assert isinstance(server, QdrantServerVectorStore) and server.name == "items"
    assert server.read_only
    with pytest.raises(VectorStoreConfigError, match="collection name"):
        open_vector_store(VectorStoreSettings(), tmp_path, collection="../etc")
