"""The vector store contract: every backend passes the same tests, checked against numpy.

``base.VectorStore`` promises that the backends are interchangeable by configuration: the same
hits (cosine similarity, best first, payload included) under the same filter semantics, the same
collection life cycle (create, replace, upsert, finalize, drop), the same aliases (pin on first
use, switch, roll back, prune to ``keep_collections``), the same errors, and the configured
index settings (payload indexes, HNSW, quantization) applied where the engine applies them.
The ``backend`` fixture runs each contract test on:

* ``edge``: qdrant-edge-py in a temporary folder, its real HNSW graph (small collections are
  indexed on purpose);
* ``qdrant-memory``: ``QdrantServerVectorStore`` on qdrant-client's local mode in memory (the
  same client calls as a server; an exact scan);
* ``qdrant-path``: the same on a folder (``vector_store.path``), which persists across reopen;
* ``qdrant-server``: a real Qdrant server when ``QDRANT_URL`` is set (``QDRANT_API_KEY`` if it
  needs one), else skipped. Every name gets a random prefix and is deleted afterwards.

What a backend can show differs in three ways only (:class:`Backend`): whether its storage
persists, whether it scans exactly (local mode) or walks a graph (recall is checked instead of
identity beyond ``EXACT_BELOW``), and whether its engine applies the index settings (local mode
records them but scans exactly). The tests after the contract cover one backend's own
mechanics (edge's folder lock and private copies, the server-only branches of
``qdrant_server.py`` driven through a recording client) and the API served from the ``qdrant``
backend in local mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from recsys.core.schema import table_path
from recsys.core.settings import Settings, VectorStoreSettings
from recsys.core.vectorstore import (
    AliasError,
    CollectionNotFoundError,
    EdgeVectorStore,
    IndexConfig,
    ItemPoint,
    QdrantServerVectorStore,
    ReadOnlyStoreError,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    VectorStoreError,
    index_config,
    open_vector_store,
)
from recsys.core.vectorstore import qdrant_server as qs
from recsys.core.vectorstore.base import EXACT_BELOW, INDEXING_THRESHOLD_KB
from tests.conftest import LiveApi, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]

N, DIM, K, N_QUERIES = 2_000, 16, 10, 30
CATEGORIES = np.array(["shoes", "dresses", "tops", "bags", "jeans"])
COLOURS = np.array(["red", "blue", "green", "black", "white", "pink", "grey", "beige"])
KEYWORDS, FLOATS, BOOLS, INTEGERS = ("category", "colour"), ("price",), ("in_stock",), ("stock",)

#: What the settings index in every collection by default (the API's filter fields).
SETTINGS_INDEXES = VectorStoreSettings().payload_indexes

SERVER_URL = os.environ.get("QDRANT_URL")
NEEDS_SERVER = pytest.mark.skipif(
    not SERVER_URL,
    reason="QDRANT_URL is not set: no Qdrant server to hold to the contract (set "
    "QDRANT_URL=http://host:6333, and QDRANT_API_KEY if the server needs one)",
)
BACKENDS = [
    pytest.param("edge", marks=pytest.mark.unit),
    pytest.param("qdrant-memory", marks=pytest.mark.unit),
    pytest.param("qdrant-path", marks=pytest.mark.unit),
    pytest.param("qdrant-server", marks=[NEEDS_SERVER, pytest.mark.e2e]),
]
#: The search-quality tests share one built collection per backend. ``qdrant-path`` searches
#: with the very engine of ``qdrant-memory`` once loaded (only its storage differs, which the
#: per-test contract covers), and writes each point with an sqlite commit (~4 ms a point).
SEARCH_BACKENDS = [p for p in BACKENDS if p.values != ("qdrant-path",)]


# -- the data and numpy's answers -----------------------------------------------------------


class Data:
    """``n`` random unit vectors with a fashion-like payload (every payload type), and queries.

    2,000 points by default: more than ``EXACT_BELOW``, so that a graph is searched.
    """

    def __init__(self, seed: int = 0, n: int = N) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        x = rng.normal(size=(n, DIM)).astype(np.float32)
        self.x = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.category = CATEGORIES[np.arange(n) % len(CATEGORIES)]
        self.colour = COLOURS[rng.integers(len(COLOURS), size=n)]
        self.price = np.round(rng.uniform(0, 100, size=n), 2)
        self.in_stock = rng.random(n) < 0.5
        self.stock = rng.integers(0, 50, size=n)
        # Queries are not normalised: the stores must score by cosine, not raw dot product.
        self.queries = rng.normal(size=(N_QUERIES, DIM)).astype(np.float32) * 3.0
        self.payloads = [
            {
                "category": str(self.category[i]),
                "colour": str(self.colour[i]),
                "price": float(self.price[i]),
                "in_stock": bool(self.in_stock[i]),
                "stock": int(self.stock[i]),
            }
            for i in range(n)
        ]

    def points(self) -> list[ItemPoint]:
        return [ItemPoint(i, self.x[i], self.payloads[i]) for i in range(self.n)]

    def mask(self, flt: SearchFilter | None) -> np.ndarray:
        """Which points pass ``flt``, evaluated independently of any backend."""
        keep = np.ones(self.n, dtype=bool)
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
        keep[[i for i in flt.exclude_ids if i < self.n]] = False
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


@pytest.fixture(scope="module")
def small_data() -> Data:
    """250 points: enough for a scan, which is all that local mode does (and each point it
    writes to a folder costs an sqlite commit)."""
    return Data(seed=1, n=250)


# -- the backends -----------------------------------------------------------------------------


class Backend:
    """One backend's storage: opens stores on it, closes them all (a process exit), cleans up.

    ``name("items")`` is what a test calls ``items``: the same on local backends, with a random
    prefix on a shared server so that tests never meet each other's (or anyone's) collections.
    """

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        self.prefix = f"t{uuid.uuid4().hex[:8]}_" if kind == "qdrant-server" else ""
        self.persistent = kind != "qdrant-memory"
        self.exact = kind in ("qdrant-memory", "qdrant-path")  # local mode: a brute-force scan
        self.applies_index = kind in ("edge", "qdrant-server")
        self.queries = 10 if self.exact else N_QUERIES  # an exact scan needs fewer to show it
        self._memory = QdrantClient(location=":memory:") if kind == "qdrant-memory" else None
        self._stores: list[VectorStore] = []

    def name(self, base: str = "items") -> str:
        return self.prefix + base

    def store(
        self,
        base: str = "items",
        *,
        read_only: bool = False,
        hnsw_ef: int = 64,
        index: IndexConfig | None = None,
    ) -> VectorStore:
        """A new store object on this backend's storage, opened on ``name(base)``."""
        name = self.name(base)
        options: dict[str, Any] = {"read_only": read_only, "hnsw_ef": hnsw_ef, "index": index}
        store: VectorStore
        if self.kind == "edge":
            store = EdgeVectorStore(self.root / name, **options)
        elif self.kind == "qdrant-memory":
            store = QdrantServerVectorStore(name, client=self._memory, **options)
        elif self.kind == "qdrant-path":
            store = QdrantServerVectorStore(name, path=self.root / "qdrant_local", **options)
        else:
            api_key = os.environ.get("QDRANT_API_KEY")
            store = QdrantServerVectorStore(name, url=SERVER_URL, api_key=api_key, **options)
        self._stores.append(store)
        return store

    def close_all(self) -> None:
        """Close every store opened so far: the next store reads the storage afresh."""
        for store in self._stores:
            store.close()
        self._stores.clear()

    def cleanup(self) -> None:
        self.close_all()
        if self.kind == "qdrant-server":
            client = QdrantClient(url=SERVER_URL, api_key=os.environ.get("QDRANT_API_KEY"))
            drop_prefixed(client, self.prefix)
            client.close()
        if self._memory is not None:
            self._memory.close()


def drop_prefixed(client: QdrantClient, prefix: str) -> list[str]:
    """Delete the aliases and collections whose names start with ``prefix`` (a test's own on a
    shared server); return the collections deleted."""
    aliases = [a.alias_name for a in client.get_aliases().aliases]
    aliases = [alias for alias in aliases if alias.startswith(prefix)]
    if aliases:
        client.update_collection_aliases(
            change_aliases_operations=[
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))
                for alias in aliases
            ]
        )
    dropped = [c.name for c in client.get_collections().collections if c.name.startswith(prefix)]
    for name in dropped:
        client.delete_collection(name)
    return dropped


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Empty storage of each backend, for one test."""
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture(scope="module", params=SEARCH_BACKENDS)
def built(
    request: pytest.FixtureRequest, data: Data, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VectorStore]:
    """The 2,000 points in a collection of each backend, built once, with the index settings
    that ``recsys index`` gets by default (the API's filter fields indexed)."""
    b = Backend(request.param, tmp_path_factory.mktemp(request.param))
    store = b.store(index=index_config(VectorStoreSettings()))
    store.create_collection(store.name, DIM, KEYWORDS, FLOATS, BOOLS, INTEGERS, run_id="r0")
    store.upsert(data.points(), batch_size=500)
    store.finalize()
    store.exact = b.exact  # type: ignore[attr-defined]  # what recall to expect
    store.applies_index = b.applies_index  # type: ignore[attr-defined]
    store.queries = b.queries  # type: ignore[attr-defined]
    yield store
    b.cleanup()


# Filters small enough (< EXACT_BELOW matching points) to be searched exactly by every backend.
EXACT_FILTERS = {
    "equals_keyword": SearchFilter(equals={"category": "dresses"}),
    "equals_keyword_and_bool": SearchFilter(equals={"category": "tops", "in_stock": True}),
    "equals_false": SearchFilter(equals={"category": "bags", "in_stock": False}),
    "equals_integer": SearchFilter(equals={"stock": 7}),
    "any_of": SearchFilter(any_of={"colour": ["red", "blue", "beige"]}),
    "range": SearchFilter(ranges={"price": (20.0, 40.0)}),
    "open_range": SearchFilter(ranges={"price": (None, 15.5)}),
    "integer_range": SearchFilter(ranges={"stock": (10, 19)}),
    "combined": SearchFilter(
        equals={"category": "shoes"},
        any_of={"colour": ["black", "white", "grey", "pink"]},
        ranges={"price": (10.0, None)},
        exclude_ids=frozenset(range(0, N, 3)),
    ),
    # what the API sends (models/sources/two_tower.py): equality, a price cap, bought items out
    "api_request": SearchFilter(
        equals={"category": "jeans", "in_stock": True},
        ranges={"price": (None, 60.0)},
        exclude_ids=frozenset(range(0, N, 7)),
    ),
}
# Broad filters go through filtered HNSW on a graph: checked for correctness and recall.
BROAD_FILTERS = {
    "in_stock": SearchFilter(equals={"in_stock": True}),
    "not_in_stock": SearchFilter(equals={"in_stock": False}),
    "any_of_wide": SearchFilter(any_of={"category": ["shoes", "tops", "jeans"]}),
}


def recall(store: VectorStore, data: Data, flt: SearchFilter | None = None) -> float:
    """Share of numpy's exact top K found, over the queries the backend needs."""
    found = total = 0
    for q in data.queries[: getattr(store, "queries", N_QUERIES)]:
        truth = set(data.exact(q, K, flt))
        found += len(truth & {h.id for h in store.search(q, K, flt)})
        total += len(truth)
    return found / total


def assert_valid_hits(
    store: VectorStore, data: Data, q: np.ndarray, flt: SearchFilter | None, k: int = K
) -> None:
    """Hits are unique, pass the filter, are best-first and carry the true cosine and payload."""
    hits = store.search(q, k, flt)
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) == min(k, int(data.mask(flt).sum()))
    assert data.mask(flt)[ids].all(), "a hit does not pass the filter"
    scores = np.array([h.score for h in hits])
    assert np.all(np.diff(scores) <= 1e-6), "hits are not best-first"
    cosine = data.x[ids].astype(np.float64) @ (q / np.linalg.norm(q))
    np.testing.assert_allclose(scores, cosine, atol=1e-4)
    for h in hits:
        assert h.payload == data.payloads[h.id]
        assert h.payload["in_stock"] is bool(data.in_stock[h.id])  # a bool, not 0/1
        assert type(h.payload["stock"]) is int and type(h.payload["price"]) is float


def publish(store: VectorStore, alias: str, run: str, n: int = 12) -> str:
    """What ``recsys index`` does: a new collection for ``run`` (each payload names the run),
    finalized and let go of, then the alias moved to it."""
    rng = np.random.default_rng(zlib.crc32(run.encode()))
    name = store.new_collection_name(alias, run)
    store.create_collection(name, 4, bool_fields=["in_stock"], run_id=run)
    vectors = rng.normal(size=(n, 4))
    store.upsert(
        [ItemPoint(i, vectors[i], {"run": run, "in_stock": bool(i % 2)}) for i in range(n)],
        collection=name,
    )
    store.finalize(collection=name)
    store.close()  # as build_index: a writable edge store must not hold what it publishes
    store.set_alias(alias, name, run_id=run)
    return name


def seen_run(store: VectorStore) -> str:
    """Which run's collection a store searches."""
    hits = store.search(np.ones(4), 3, SearchFilter(equals={"in_stock": True}))
    assert len(hits) == 3
    return hits[0].payload["run"]


# == the contract ==============================================================================

# -- search: scores, order, limit, payload --------------------------------------------------


def test_top_k_is_cosine_best_first_with_payloads(built: VectorStore, data: Data) -> None:
    for q in data.queries[:5]:
        assert_valid_hits(built, data, q, None)
    # local mode scans exactly; a graph (edge, server) must still find nine in ten
    assert recall(built, data) >= (1.0 if built.exact else 0.9)  # type: ignore[attr-defined]


def test_limit(built: VectorStore, data: Data) -> None:
    q = data.queries[0]
    for k in (1, 3, 50):
        assert_valid_hits(built, data, q, None, k=k)
    flt = SearchFilter(equals={"stock": 3})
    matching = int(data.mask(flt).sum())
    assert matching < 100
    assert len(built.search(q, 100, flt)) == matching  # k beyond the matches: all of them
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            built.search(q, bad)  # type: ignore[arg-type]


def test_search_without_payloads_finds_the_same_hits(built: VectorStore, data: Data) -> None:
    flt = SearchFilter(exclude_ids=frozenset({1, 2, 3}))
    for q in data.queries[:5]:
        full, bare = built.search(q, 20, flt), built.search(q, 20, flt, with_payload=False)
        assert [h.id for h in bare] == [h.id for h in full]
        assert np.allclose([h.score for h in bare], [h.score for h in full], atol=1e-6)
        assert all(h.payload == {} for h in bare) and all(h.payload for h in full)


def test_count_health_and_default_index_settings(built: VectorStore) -> None:
    assert built.count() == N
    health = built.health()
    assert health["ok"] is True and health["points"] == N and health["run_id"] == "r0"
    assert health["backend"] == built.backend and health["collection"] == built.name
    index = health["index"]
    # the caller's fields and the settings' (the API's filter fields) are all indexed
    expected = {"category": "keyword", "colour": "keyword", "price": "float",
                "in_stock": "bool", "stock": "integer", **SETTINGS_INDEXES}  # fmt: skip
    assert index["payload_indexes"] == expected
    assert index["hnsw"] == {"m": 16, "ef_construct": 100}
    assert index["quantization"] is None
    assert index["applied"] is built.applies_index  # type: ignore[attr-defined]
    if built.backend == "edge":  # small collections are indexed with HNSW on purpose
        assert N > EXACT_BELOW and health["indexed_vectors"] == N


# -- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXACT_FILTERS))
def test_small_filters_are_exact(built: VectorStore, data: Data, name: str) -> None:
    flt = EXACT_FILTERS[name]
    assert 0 < data.mask(flt).sum() < EXACT_BELOW
    for q in data.queries[:3]:
        assert_valid_hits(built, data, q, flt)
    for q in data.queries[: built.queries]:  # type: ignore[attr-defined]
        assert [h.id for h in built.search(q, K, flt)] == data.exact(q, K, flt)


@pytest.mark.parametrize("name", sorted(BROAD_FILTERS))
def test_broad_filters_are_honoured(built: VectorStore, data: Data, name: str) -> None:
    flt = BROAD_FILTERS[name]
    for q in data.queries[:3]:
        assert_valid_hits(built, data, q, flt)
    assert recall(built, data, flt) >= 0.9


def test_exclude_ids_removes_the_best_hits(built: VectorStore, data: Data) -> None:
    rng = np.random.default_rng(1)
    found = 0
    queries = data.queries[: built.queries]  # type: ignore[attr-defined]
    for q in queries:
        # Exclude the query's true top 5 plus 95 random ids: the worst case for a graph.
        top = data.exact(q, 5)
        excluded = frozenset(top) | frozenset(rng.choice(N, 95, replace=False).tolist())
        flt = SearchFilter(exclude_ids=excluded)
        hits = built.search(q, K, flt)
        assert len(hits) == K
        assert not excluded & {h.id for h in hits}
        found += len(set(data.exact(q, K, flt)) & {h.id for h in hits})
    assert found / (K * len(queries)) >= 0.9


def test_filter_matching_nothing(built: VectorStore, data: Data) -> None:
    q = data.queries[0]
    assert built.search(q, K, SearchFilter(equals={"category": "hats"})) == []
    assert built.search(q, K, SearchFilter(equals={"no_such_field": "x"})) == []
    assert built.search(q, K, SearchFilter(any_of={"colour": []})) == []
    assert built.search(q, K, SearchFilter(ranges={"price": (200.0, None)})) == []
    assert built.search(q, K, SearchFilter(exclude_ids=frozenset(range(N)))) == []


# -- collections: create, replace, upsert, empty, errors --------------------------------------


def test_empty_collection_is_healthy_and_finds_nothing(backend: Backend) -> None:
    store = backend.store()
    store.create_collection(store.name, 3, ["colour"])
    store.finalize()
    assert store.count() == 0
    assert store.search([1.0, 0.0, 0.0], 5) == []
    assert store.search([1.0, 0.0, 0.0], 5, SearchFilter(equals={"colour": "red"})) == []
    health = store.health()
    assert health["ok"] is True and health["points"] == 0


def test_upsert_replaces_and_create_is_not_idempotent(backend: Backend) -> None:
    store = backend.store()
    store.create_collection(store.name, 3, ["colour"], bool_fields=["flag"])
    points = [ItemPoint(i, [1.0, i, 0.0], {"colour": "red", "flag": True}) for i in range(5)]
    store.upsert(points)
    store.upsert(points)  # the same points again: replaced, not added
    store.upsert([ItemPoint(np.int64(2), np.array([0.0, 0.0, 1.0]), {"colour": "blue"})])
    store.finalize()
    store.finalize()  # twice is harmless
    assert store.count() == 5
    [hit] = store.search([0.0, 0.0, 5.0], 1)
    assert (hit.id, hit.payload) == (2, {"colour": "blue"})  # the payload is replaced whole
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    flagged = store.search([1, 0, 0], 10, SearchFilter(equals={"flag": True}))
    assert {h.id for h in flagged} == {0, 1, 3, 4}
    with pytest.raises(ValueError, match=">= 0"):
        store.upsert([ItemPoint(-1, [1.0, 0.0, 0.0], {})])
    with pytest.raises(ValueError, match="NaN"):
        store.upsert([ItemPoint(9, [1.0, 0.0, 0.0], {"price": float("nan")})])

    with pytest.raises(VectorStoreError, match="already exists"):
        store.create_collection(store.name, 3)
    assert store.count() == 5
    store.create_collection(store.name, 3, replace=True)
    assert store.count() == 0
    assert store.drop_collection(store.name) is True
    assert store.drop_collection(store.name) is False
    assert store.name not in store.list_collections()


def test_wrong_vector_size_names_the_collection_and_the_vector(backend: Backend) -> None:
    store = backend.store()
    store.create_collection(store.name, 3)
    store.upsert([ItemPoint(1, [1.0, 0.0, 0.0], {})])
    with pytest.raises(
        ValueError, match=rf"query vector has 2 dimensions.*{store.name}.*3-dimensional"
    ):
        store.search([1.0, 0.0], 1)
    with pytest.raises(ValueError, match=rf"vector of point 7 has 4 dimensions.*{store.name}"):
        store.upsert([ItemPoint(7, [1.0, 0.0, 0.0, 0.0], {})])
    with pytest.raises(ValueError, match="one-dimensional"):
        store.search(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="NaN or inf"):
        store.search([np.nan, 0.0, 0.0], 1)
    assert store.count() == 1  # nothing of the bad batch was written


def test_missing_collection_errors_name_the_place(backend: Backend) -> None:
    store = backend.store("nowhere")
    with pytest.raises(CollectionNotFoundError, match=r"nowhere.*recsys index"):
        store.search([1.0, 0.0], 1)
    with pytest.raises(CollectionNotFoundError):
        store.count()
    health = store.health()
    assert health["ok"] is False and health["points"] is None and "recsys index" in health["error"]


def test_one_field_one_index_kind(backend: Backend) -> None:
    store = backend.store(index=IndexConfig(payload_indexes={"price": "keyword"}))
    with pytest.raises(VectorStoreConfigError, match=r"'price'.*'float'.*'keyword'"):
        store.create_collection(store.name, 3, float_fields=["price"])
    assert store.list_collections() == []


# -- index settings ---------------------------------------------------------------------------


def test_index_settings_take_effect(backend: Backend, data: Data, small_data: Data) -> None:
    """HNSW, int8 quantization and payload indexes from the settings reach the engine (edge and
    a server report them back; local mode records them), and rescoring keeps exact cosine."""
    data = small_data if backend.exact else data  # a graph needs more than EXACT_BELOW
    index = IndexConfig(
        payload_indexes={"stock": "integer", "category": "keyword"},
        hnsw_m=8,
        hnsw_ef_construct=40,
        quantization="int8",
        quantile=0.95,
        always_ram=True,
        rescore=True,
        oversampling=3.0,
    )
    store = backend.store(index=index, hnsw_ef=128)
    store.queries = backend.queries  # type: ignore[attr-defined]
    store.create_collection(store.name, DIM, ["colour"], run_id="q1")
    store.upsert(data.points(), batch_size=1000)
    store.finalize()
    report = store.health()["index"]
    assert report == {
        "hnsw": {"m": 8, "ef_construct": 40},
        "quantization": {"type": "int8", "quantile": 0.95, "always_ram": True},
        "payload_indexes": {"category": "keyword", "colour": "keyword", "stock": "integer"},
        "applied": backend.applies_index,
    }
    for q in data.queries[:5]:
        assert_valid_hits(store, data, q, None)  # rescored: the exact cosine
    assert recall(store, data) >= (1.0 if backend.exact else 0.9)
    flt = EXACT_FILTERS["integer_range"]
    assert [h.id for h in store.search(data.queries[0], K, flt)] == data.exact(
        data.queries[0], K, flt
    )


# -- persistence ------------------------------------------------------------------------------


def test_everything_persists_across_reopen(backend: Backend, data: Data, small_data: Data) -> None:
    if not backend.persistent:
        pytest.skip(f"{backend.kind} keeps nothing once its client is gone (not persistent)")
    data = small_data if backend.exact else data
    alias = backend.name("items")
    writer = backend.store()
    name = writer.new_collection_name(alias, "r1")
    writer.create_collection(name, DIM, KEYWORDS, FLOATS, BOOLS, INTEGERS, run_id="r1")
    writer.upsert(data.points(), batch_size=1000, collection=name)
    writer.finalize(collection=name)
    writer.close()
    writer.set_alias(alias, name, run_id="r1")
    flt = EXACT_FILTERS["combined"]
    before = [[(h.id, h.score) for h in writer.search(q, K, f)]
              for f in (None, flt) for q in data.queries[:5]]  # fmt: skip
    backend.close_all()

    reader = backend.store(read_only=True)
    assert reader.current_collection == name and reader.current_run_id == "r1"
    assert reader.count() == data.n and reader.alias_history(alias) == [name]
    after = [[(h.id, h.score) for h in reader.search(q, K, f)]
             for f in (None, flt) for q in data.queries[:5]]  # fmt: skip
    assert [[i for i, _ in hits] for hits in after] == [[i for i, _ in hits] for hits in before]
    np.testing.assert_allclose(
        [[s for _, s in hits] for hits in after], [[s for _, s in hits] for hits in before],
        atol=1e-6,
    )  # fmt: skip
    assert reader.health()["index"]["payload_indexes"]["stock"] == "integer"
    # the same object reopens lazily after close()
    reader.close()
    assert reader.count() == data.n


# -- aliases: switch, pin, roll back, keep_collections ------------------------------------------


def test_alias_switch_pin_and_rollback(backend: Backend) -> None:
    alias = backend.name("items")
    writer = backend.store()
    assert writer.alias_target(alias) is None
    first = publish(writer, alias, "r1")
    reader = backend.store(read_only=True)
    assert reader.current_collection == first and seen_run(reader) == "r1"

    second = publish(writer, alias, "r2")
    assert writer.set_alias(alias, second) == second  # moving it where it is: a no-op
    # pinned: a request never meets another run's vectors before the API swaps its model
    assert reader.current_collection == first and seen_run(reader) == "r1"
    fresh = backend.store(read_only=True)
    assert fresh.current_run_id == "r2" and seen_run(fresh) == "r2"
    assert writer.list_aliases() == {alias: second}
    assert [e.run_id for e in writer.alias_entries(alias)] == ["r1", "r2"]

    assert writer.rollback(alias) == (second, first)
    assert seen_run(backend.store(read_only=True)) == "r1"
    with pytest.raises(AliasError, match="Nothing to roll back to"):
        writer.rollback(alias)
    assert writer.rollback(alias, to=second) == (first, second)  # roll forward again
    assert writer.alias_history(alias) == [first, second]
    with pytest.raises(CollectionNotFoundError, match="no such collection"):
        writer.set_alias(alias, backend.name("nope"))


def test_keep_collections_prunes_old_runs_only(backend: Backend) -> None:
    alias, other = backend.name("items"), backend.name("other")
    writer = backend.store()
    publish(backend.store("other"), other, "x")  # another alias's collections are never touched
    names = [publish(writer, alias, run) for run in ("r1", "r2", "r3", "r4")]
    keep = VectorStoreSettings().keep_collections
    assert writer.prune(alias, keep) == names[: len(names) - keep]
    assert writer.list_collections() == sorted([*names[-keep:], f"{other}__x"])
    assert writer.prune(alias, keep) == []  # idempotent
    with pytest.raises(AliasError, match="move the alias first"):
        writer.drop_collection(names[-1])
    with pytest.raises(ValueError, match="keep"):
        writer.prune(alias, 0)


def test_read_only_stores_refuse_writes(backend: Backend) -> None:
    alias = backend.name("items")
    first = publish(backend.store(), alias, "r1")
    reader = backend.store(read_only=True)
    for write in (
        lambda: reader.create_collection(backend.name("items__x"), 4),
        lambda: reader.upsert([ItemPoint(1, [1.0, 0.0, 0.0, 0.0], {})]),
        lambda: reader.finalize(),
        lambda: reader.set_alias(alias, first),
        lambda: reader.rollback(alias),
        lambda: reader.drop_collection(first),
        lambda: reader.prune(alias, keep=1),
    ):
        with pytest.raises(ReadOnlyStoreError, match="read_only=False"):
            write()
    assert reader.count() == 12 and reader.alias_history(alias) == [first]


# == one backend's own mechanics ================================================================


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


def test_index_config_validation() -> None:
    with pytest.raises(VectorStoreConfigError, match="kind 'text'"):
        IndexConfig(payload_indexes={"title": "text"})
    with pytest.raises(VectorStoreConfigError, match="must be >= 4"):
        IndexConfig(hnsw_m=2)
    with pytest.raises(VectorStoreConfigError, match="quantile"):
        IndexConfig(quantile=0.2)
    with pytest.raises(VectorStoreConfigError, match="oversampling"):
        IndexConfig(oversampling=0.5)
    with pytest.raises(ValueError):
        VectorStoreSettings(quantization="int4")  # type: ignore[arg-type]


def test_open_vector_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    edge = open_vector_store(VectorStoreSettings(), tmp_path)
    assert isinstance(edge, EdgeVectorStore) and edge.path == tmp_path / "qdrant" / "items"
    assert edge.index.payload_indexes == SETTINGS_INDEXES and not edge.index.quantized
    other = open_vector_store(VectorStoreSettings(hnsw_ef=128), tmp_path, collection="items_v2")
    assert isinstance(other, EdgeVectorStore)
    assert other.path == tmp_path / "qdrant" / "items_v2" and other.hnsw_ef == 128

    with pytest.raises(VectorStoreConfigError, match="RECSYS_VECTOR_STORE__URL.*__PATH"):
        open_vector_store(VectorStoreSettings(type="qdrant"), tmp_path)
    server = open_vector_store(
        VectorStoreSettings(type="qdrant", url="http://localhost:6333", path=Path("ignored")),
        tmp_path,
        read_only=True,
    )
    assert isinstance(server, QdrantServerVectorStore) and server.name == "items"
    assert server.read_only and server.url == "http://localhost:6333" and server.path is None
    local = open_vector_store(VectorStoreSettings(type="qdrant", path=Path("qv")), tmp_path)
    assert isinstance(local, QdrantServerVectorStore) and local.path == tmp_path / "qv"
    with pytest.raises(VectorStoreConfigError, match="collection name"):
        open_vector_store(VectorStoreSettings(), tmp_path, collection="../etc")

    # every index setting has its environment variable
    for key, value in {
        "TYPE": "qdrant", "PATH": "/srv/qv", "QUANTIZATION": "int8", "HNSW_M": "32",
        "HNSW_EF_CONSTRUCT": "200", "HNSW_EF": "96", "QUANTIZATION_RESCORE": "false",
        "QUANTIZATION_OVERSAMPLING": "3", "QUANTIZATION_ALWAYS_RAM": "false",
        "QUANTIZATION_QUANTILE": "0.9", "PAYLOAD_INDEXES__X_BRAND": "keyword",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"RECSYS_VECTOR_STORE__{key}", value)
    cfg = Settings(home=tmp_path).vector_store
    index = index_config(cfg)
    assert cfg.path == Path("/srv/qv") and cfg.hnsw_ef == 96
    assert index == IndexConfig(payload_indexes={"x_brand": "keyword"}, hnsw_m=32,
                                hnsw_ef_construct=200, quantization="int8", quantile=0.9,
                                always_ram=False, rescore=False, oversampling=3.0)  # fmt: skip


@pytest.mark.e2e
def test_edge_reopens_from_disk_in_a_new_process(data: Data, tmp_path: Path) -> None:
    path = tmp_path / "items"
    store = EdgeVectorStore(path)
    store.create_collection(store.name, DIM, KEYWORDS, FLOATS, BOOLS, INTEGERS)
    store.upsert(data.points(), batch_size=500)
    store.finalize()
    flt = EXACT_FILTERS["combined"]
    before = [[(h.id, h.score) for h in store.search(q, K, f)]
              for f in (None, flt) for q in data.queries[:5]]  # fmt: skip
    store.close()

    script = f"""
import json
from pathlib import Path
from recsys.core.vectorstore import EdgeVectorStore
from tests.test_vectorstore_contract import EXACT_FILTERS, K, Data
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
    store.close()


def test_edge_folder_is_locked_while_open(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "items")
    store.create_collection("items", DIM, KEYWORDS)
    with pytest.raises(VectorStoreError, match="open elsewhere"):
        EdgeVectorStore(tmp_path / "items").count()
    store.close()
    assert EdgeVectorStore(tmp_path / "items").count() == 0


def test_edge_refuses_to_wipe_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(VectorStoreError, match="Refusing"):
        EdgeVectorStore(tmp_path).create_collection(tmp_path.name, 4)
    assert (tmp_path / "precious.txt").exists()


def test_edge_builds_quantized_vectors_and_its_graph_with_the_settings(
    tmp_path: Path, data: Data
) -> None:
    """On disk, not only in the reported config: each indexed segment has int8 vectors and a
    graph with the configured m and ef_construct."""
    index = IndexConfig(hnsw_m=8, hnsw_ef_construct=40, quantization="int8", always_ram=False)
    store = EdgeVectorStore(tmp_path / "items", index=index)
    store.create_collection("items", DIM)
    store.upsert(data.points(), batch_size=1000)
    store.finalize()
    assert store.health()["index"]["quantization"]["always_ram"] is False
    store.close()
    graphs = list((tmp_path / "items").glob("segments/*/vector_index/hnsw_config.json"))
    assert graphs and list((tmp_path / "items").glob("segments/*/vector_storage/quantized.data"))
    for graph in graphs:
        config = json.loads(graph.read_text())
        assert (config["m"], config["ef_construct"]) == (8, 40)


class RecordingClient:
    """A qdrant-client that records what a server would be sent and answers through a local
    client. ``_client = None`` makes the store take it for a server, so the server-only branches
    (search parameters, waiting for indexing) run; ``statuses`` replaces the collection status
    that ``get_collection`` reports, one per call, to play a server's optimizer."""

    _client = None

    def __init__(self) -> None:
        self.local = QdrantClient(location=":memory:")
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[qm.CollectionStatus] = []
        self.fail_with: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.local, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            if self.fail_with is not None:
                raise self.fail_with
            result = target(*args, **kwargs)
            if name == "get_collection" and self.statuses:
                result = result.model_copy(update={"status": self.statuses.pop(0)})
            return result

        return call

    def sent(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]


def test_qdrant_server_branches_through_a_recording_client(data: Data) -> None:
    """What local mode skips or ignores, sent as to a server: HNSW and quantization at
    creation, every payload index, ``hnsw_ef`` and quantization at search, and the wait for
    the optimizer (yellow, then green twice in a row)."""
    client = RecordingClient()
    index = IndexConfig(payload_indexes={"stock": "integer"}, hnsw_m=8, hnsw_ef_construct=40,
                        quantization="int8", quantile=0.95, rescore=True,
                        oversampling=3.0)  # fmt: skip
    store = QdrantServerVectorStore("items", client=client, hnsw_ef=32, index=index)  # type: ignore[arg-type]
    assert store.poll_s == qs.FINALIZE_POLL_S  # taken for a server
    store.poll_s = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # local mode: "has no effect"
        store.create_collection("items", DIM, ["category"], bool_fields=["in_stock"])
        store.upsert(data.points()[:50])
        green, yellow = qm.CollectionStatus.GREEN, qm.CollectionStatus.YELLOW
        client.statuses = [yellow, green, yellow, green, green]
        client.calls.clear()
        store.finalize()
        hits = store.search(data.queries[0], 40)

    [created] = client.local.get_collections().collections
    assert created.name == "items"
    [update] = client.sent("update_collection")
    assert update["optimizers_config"].indexing_threshold == INDEXING_THRESHOLD_KB
    assert len(client.sent("get_collection")) == 5 and client.statuses == []
    [query] = client.sent("query_points")
    params = query["search_params"]
    assert params.hnsw_ef == 40  # max(hnsw_ef, k)
    assert (params.quantization.rescore, params.quantization.oversampling) == (True, 3.0)
    assert len(hits) == 40

    client.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        store.create_collection("again", DIM, ["category"], bool_fields=["in_stock"])
    [create] = client.sent("create_collection")
    assert (create["hnsw_config"].m, create["hnsw_config"].ef_construct) == (8, 40)
    scalar = create["quantization_config"].scalar
    assert (scalar.type, scalar.quantile, scalar.always_ram) == (qm.ScalarType.INT8, 0.95, True)
    assert create["optimizers_config"].indexing_threshold == 0  # paused for the bulk load
    schemas = [c["field_schema"] for c in client.sent("create_payload_index")]
    assert schemas == [qm.PayloadSchemaType.KEYWORD, qm.PayloadSchemaType.BOOL,
                       qm.PayloadSchemaType.INTEGER]  # fmt: skip
    assert all(c["wait"] is True for c in client.sent("create_payload_index"))


def test_qdrant_finalize_gives_up_on_an_optimizer_that_never_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = RecordingClient()
    store = QdrantServerVectorStore("items", client=client)  # type: ignore[arg-type]
    store.poll_s = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        store.create_collection("items", 3)
    monkeypatch.setattr(qs, "FINALIZE_TIMEOUT_S", 0.0)
    client.statuses = [qm.CollectionStatus.YELLOW] * 10
    with pytest.raises(VectorStoreError, match=r"'items'.*still.*yellow.*indexing"):
        store.finalize()


def test_qdrant_server_errors_become_store_errors() -> None:
    """A server answers 404 for a missing collection (local mode raises ValueError, covered by
    the contract); other failures name the call and the collection."""
    client = RecordingClient()
    store = QdrantServerVectorStore("items", client=client)  # type: ignore[arg-type]
    client.fail_with = UnexpectedResponse(404, "Not Found", b"{}", httpx.Headers())
    with pytest.raises(CollectionNotFoundError, match=r"'items'.*recsys index"):
        store.search([1.0, 0.0], 1)
    assert store.health()["ok"] is False
    client.fail_with = UnexpectedResponse(500, "Internal Server Error", b"{}", httpx.Headers())
    with pytest.raises(VectorStoreError, match=r"Counting on collection 'items'.*500"):
        store.count(collection="items")
    client.fail_with = ConnectionRefusedError("connection refused")
    with pytest.raises(VectorStoreError, match="Listing collections.*refused"):
        store.list_collections()


def test_qdrant_path_is_shared_in_a_process_and_locked_for_others(tmp_path: Path) -> None:
    folder = tmp_path / "qv"
    one = QdrantServerVectorStore("items", path=folder)
    two = QdrantServerVectorStore("items", path=folder, read_only=True)
    one.create_collection("items", 3)
    one.upsert([ItemPoint(1, [1.0, 0.0, 0.0], {})])
    assert two.count() == 1 and one.client is two.client  # one client per folder
    one.close()
    assert two.count() == 1  # still open for the other store
    two.close()
    # the folder is free once no store uses it: another client (another process) may take it
    other = QdrantClient(path=str(folder))
    assert other.count("items").count == 1
    with pytest.raises(VectorStoreError, match="open in another process.*one process"):
        QdrantServerVectorStore("items", path=folder).count()
    other.close()
    again = QdrantServerVectorStore("items", path=folder)
    assert again.count() == 1
    again.close()


# == the API on the qdrant backend ==============================================================


def test_api_serves_from_the_qdrant_backend(live_home: Path) -> None:
    """`recsys index` and `recsys serve` with RECSYS_VECTOR_STORE__TYPE=qdrant on a local-mode
    folder (no server here): the two-tower candidates come from qdrant-client, filters and
    all, and the answers are those of a shop."""
    env = {"RECSYS_VECTOR_STORE__TYPE": "qdrant", "RECSYS_VECTOR_STORE__PATH": "qdrant_local"}
    run_cli(live_home, "index", RECSYS_VECTOR_STORE__TYPE="qdrant",
            RECSYS_VECTOR_STORE__PATH="qdrant_local")  # fmt: skip
    assert (live_home / "qdrant_local" / "meta.json").is_file()

    settings = Settings(home=live_home)
    items = pd.read_parquet(table_path(settings.validated_dir, "items")).set_index("item_id")
    inter = pd.read_parquet(table_path(settings.validated_dir, "interactions"))
    buys = inter[inter["event_type"] == "purchase"]
    counts = buys.groupby("user_id").size()
    user = str(counts[counts >= 3].index[0])
    bought = set(buys.loc[buys["user_id"] == user, "item_id"])
    item = str(buys["item_id"].value_counts().index[0])

    api = LiveApi(live_home, **env).start()
    try:
        status, health = api.request("GET", "/health")
        vectors = health["vector_store"]
        assert status == 200 and vectors["ok"] is True, health
        assert vectors["backend"] == "qdrant" and vectors["points"] == len(items)
        assert vectors["index"]["payload_indexes"]["price"] == "float"

        status, body = api.request("GET", f"/users/{user}/recommendations?k=10")
        assert status == 200 and len(body["items"]) == 10, body
        ids = [i["item_id"] for i in body["items"]]
        assert len(set(ids)) == 10 and not set(ids) & bought
        assert "two_tower" in {s for i in body["items"] for s in i["sources"]}, body

        category = str(items["category"].value_counts().index[0])
        max_price = float(items["price"].median())
        status, body = api.request(
            "GET",
            f"/users/{user}/recommendations?k=10&category={category}&max_price={max_price}",
        )
        assert status == 200 and body["items"], body
        for hit in body["items"]:
            row = items.loc[hit["item_id"]]
            assert row["category"] == category and row["price"] <= max_price

        for method in ("behaviour", "content", "hybrid"):
            status, body = api.request("GET", f"/items/{item}/similar?method={method}&k=5")
            similar = [i["item_id"] for i in body["items"]]
            assert status == 200 and len(similar) == 5 and item not in similar, body
    finally:
        api.stop()
