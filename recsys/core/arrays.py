"""Array primitives every layer ranks with: one top-k and one row normalisation.

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
