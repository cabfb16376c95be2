"""Array primitives every layer ranks with: one top-k, its inner-product form and one row
normalisation.

Candidate sources, the exact search of ranker training, the baselines of ``recsys evaluate``,
item2vec's neighbours and the API's ``similar`` all pick the best items through
:func:`top_k`, so ties and masked (-inf) scores are treated the same everywhere.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, finite_only: bool = False) -> np.ndarray:
    """Positions of the ``k`` largest scores along the last axis, best first.

    Works on one score vector or on a matrix (one row per query). ``argpartition`` then a
    stable sort of the kept part: O(n + k log k) instead of sorting everything.
    ``finite_only`` (vectors only): drop positions whose score is -inf or NaN, i.e. masked out
    by the caller (already bought, filtered), so fewer than ``k`` may come back.
    """
    n = scores.shape[-1]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.empty((*scores.shape[:-1], 0), dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
        top = np.take_along_axis(part, order, axis=-1)
    else:
        top = np.argsort(-scores, axis=-1, kind="stable")
    if finite_only:
        if top.ndim != 1:
            raise ValueError("top_k(finite_only=True) takes one score vector, not a matrix")
        top = top[np.isfinite(scores[top])]
    return top.astype(np.int64, copy=False)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a dot product is then the cosine); zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class InnerProductTopK:
    """Exact top-k of ``vectors @ query`` that scores only the vectors which can reach it.

    The vectors are kept in order of decreasing norm. A score is at most ``|query| * |v|``
    (Cauchy-Schwarz), so once the k-th best score among the vectors scored so far beats that
    bound for every vector left, none of them can enter the top k and they are never read.
    Matrix factorisation gives popular items the large norms, so a query reads a fraction of
    the catalogue (ALS at ASOS size: about a quarter): less memory streamed per request, which
    is what a full scan costs in a busy server whose caches hold other requests' data. Results
    equal :func:`top_k` over the full product, but for the order among exactly equal scores.
    """

    def __init__(self, vectors: np.ndarray, first: int = 1024) -> None:
        vectors = np.asarray(vectors)
        norms = np.linalg.norm(vectors, axis=1)
        self.order = np.argsort(-norms, kind="stable")  # sorted position -> original row
        self.vectors = np.ascontiguousarray(vectors[self.order])
        # negated, so increasing for searchsorted; widened by float32's rounding, so that a
        # bound is never below a score
        self._neg_bounds = -norms[self.order] * (1 + 1e-5)
        #: how many to score in one go before the first check: the running mean of how many
        #: the bound let through (answers never depend on it, only how many products it takes)
        self.first = float(max(1, first))

    def __call__(
        self, query: np.ndarray, k: int, blocked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(rows best first, their scores, how many vectors were scored) for the ``k`` largest
        scores; rows where the boolean ``blocked`` (over the original rows) is set are never
        returned, so fewer than ``k`` come back only when fewer are left unblocked."""
        n = len(self.order)
        k = max(0, min(int(k), n))
        scale = float(np.linalg.norm(query))
        scored = min(n, max(int(self.first * 1.1), k))
        scores = self._masked(self.vectors[:scored] @ query, 0, scored, blocked)
        while True:
            finite = np.isfinite(scores)
            if np.count_nonzero(finite) < k:  # too many blocked so far: read further
                needed = min(n, 2 * scored)
            elif k == 0 or scale == 0:  # nothing asked, or every score is 0
                needed = k
            else:  # the vectors whose bound reaches the k-th score; the rest cannot beat it
                kth = np.partition(scores[finite], -k)[-k]
                needed = int(np.searchsorted(self._neg_bounds, -kth / scale, side="right"))
            if needed <= scored:
                break
            part = self._masked(self.vectors[scored:needed] @ query, scored, needed, blocked)
            scores, scored = np.concatenate([scores, part]), needed
        self.first += 0.1 * (needed - self.first)
        top = top_k(scores, k, finite_only=True)
        return self.order[top], scores[top], scored

    def _masked(self, scores: np.ndarray, start: int, stop: int,
                blocked: np.ndarray | None) -> np.ndarray:  # fmt: skip
        if blocked is None:
            return scores
        return np.where(blocked[self.order[start:stop]], -np.inf, scores)
