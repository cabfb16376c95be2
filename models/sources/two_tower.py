"""Two-tower source: the items whose vectors are nearest the visitor's two-tower vector.

Serving asks the vector store (HNSW, the request's filters pushed into its payload index);
ranker training asks :class:`ExactSearch` the same question over the run's item vectors. Its
evidence, the cosine of user and item vector, is filled in for every candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self

import numpy as np

from models.context import ItemCatalog, ItemFilters, UserContext, VectorSearch
from models.sources import register
from models.sources.base import CandidateSource, PrimedScores, Proposal, Request, SourceData
from recsys.core.arrays import top_k
from recsys.core.run import Run
from recsys.core.settings import TwoTowerSourceSettings
from recsys.core.vectorstore import SearchFilter, VectorStore


@register
class TwoTowerSource(CandidateSource):
    name = "two_tower"
    features = ("tt_score", "tt_rank")
    score_feature = "tt_score"
    rank_feature = "tt_rank"
    order = ("tt_score", True)
    marker = "tt_rank"
    settings_model = TwoTowerSourceSettings
    degrades = True  # a failing vector store must not fail the request

    def __init__(
        self,
        cfg: TwoTowerSourceSettings,
        item_vectors: np.ndarray | None,
        search: VectorSearch | None,
    ) -> None:
        super().__init__(cfg)
        self.item_vectors = item_vectors
        self.search = search

    @classmethod
    def fit(cls, data: SourceData, cfg: TwoTowerSourceSettings) -> Self:
        """Nothing to fit: the two-tower model is trained before the sources, and its item
        vectors (``data.item_vectors``) are the run's. The ranker's training rows search them
        exactly (:class:`ExactSearch`); serving loads the source with the vector store."""
        search = data.vector_search
        if search is None and data.item_vectors is not None:
            search = ExactSearch(data.item_vectors, data.catalog)
        return cls(cfg, data.item_vectors, search)

    @classmethod
    def load(cls, run: Run, cfg: TwoTowerSourceSettings, data: SourceData) -> Self:
        vectors = data.item_vectors if data.item_vectors is not None else run.item_vectors()
        return cls(cfg, vectors, data.vector_search)

    def prime(
        self,
        contexts: Sequence[UserContext],
        seeds: list[np.ndarray],
        sessions: list[np.ndarray],
    ) -> None:
        """The ranker's rows: their exact search scores the batch's user vectors at once."""
        if isinstance(self.search, ExactSearch):
            self.search.prime([c.vector for c in contexts if c.vector is not None])

    def propose(self, req: Request, k: int) -> Proposal | None:
        if self.search is None or req.ctx.vector is None:
            return None
        idx, scores = self.search(req.ctx.vector, k, req.filters, req.excluded)
        keep = ~req.blocked[idx]
        return Proposal(idx[keep], scores[keep])

    def evidence(
        self, req: Request, items: np.ndarray, own: Proposal | None
    ) -> dict[str, np.ndarray]:
        out = super().evidence(req, items, own)
        if self.item_vectors is not None and req.ctx.vector is not None:
            # the same cosine the vector search ranks by, for every candidate
            out["tt_score"] = self.item_vectors[items] @ req.ctx.vector
        return out

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        return "matches your profile and purchase history"


class ExactSearch:
    """Brute-force top-k over all item vectors (row = vocabulary index, row 0 zeros).

    Used to build the ranker's training rows in batch; serving asks the vector store the same
    question through HNSW. :meth:`prime` scores a batch of user vectors in one matrix product:
    one request at a time, each product streams every item vector from memory (7.6 MB at ASOS
    size; ~1 ms a user while EASE's rows evict the cache), a batch reads them once.
    """

    def __init__(self, item_vectors: np.ndarray, catalog: ItemCatalog) -> None:
        self.item_vectors, self.catalog = item_vectors, catalog
        self._primed = PrimedScores()  # user vector -> scores, from prime()

    def prime(self, vectors: Sequence[np.ndarray]) -> None:
        """Score these coming user vectors at once (an empty list lets go of the scores)."""
        if not vectors:
            self._primed.fill([], [])
            return
        queries = np.stack(vectors).astype(self.item_vectors.dtype, copy=False)
        self._primed.fill(queries, queries @ self.item_vectors.T)

    def __call__(
        self, vector: np.ndarray, k: int, filters: ItemFilters, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        query = vector.astype(self.item_vectors.dtype, copy=False)
        primed = self._primed.get(query)
        scores = primed.copy() if primed is not None else self.item_vectors @ query
        scores[0] = -np.inf
        scores[exclude] = -np.inf
        allowed = self.catalog.allowed(filters)
        if allowed is not None:
            scores[~allowed] = -np.inf
        top = top_k(scores, min(k, len(scores) - 1), finite_only=True)
        return top, scores[top].astype(np.float64)


def store_search(store: Callable[[], VectorStore]) -> VectorSearch:
    """Two-tower candidates from the vector store, the filters pushed into its payload index.

    ``store`` returns the store to ask, read at each call so that a store swapped by the API
    (a new collection behind the alias) is used at once.
    """

    def search(
        vector: np.ndarray, k: int, filters: ItemFilters, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        equals: dict[str, str | bool] = {}
        if filters.category is not None:
            equals["category"] = filters.category
        if filters.department is not None:
            equals["department"] = filters.department
        if filters.in_stock is not None:
            equals["in_stock"] = filters.in_stock
        ranges = {"price": (None, filters.max_price)} if filters.max_price is not None else {}
        hits = store().search(
            vector, k, SearchFilter(equals=equals, ranges=ranges,
                                    exclude_ids=frozenset(int(i) for i in exclude if i > 0)),
            with_payload=False,
        )  # fmt: skip
        return (
            np.fromiter((h.id for h in hits), dtype=np.int64, count=len(hits)),
            np.fromiter((h.score for h in hits), dtype=np.float64, count=len(hits)),
        )

    return search
