"""Ranking metrics for top-K recommendation, one definition for every model.

Recall@K divides the hits in the top K by ``min(K, number of relevant items)`` so that a user
with many relevant items can still reach 1.0; NDCG@K uses binary relevance and the same ideal.
Metrics are averaged over users that have at least one relevant item.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        raise ValueError("recall is undefined for a user with no relevant items")
    hits = sum(1 for item in ranked[:k] if item in relevant)
    return hits / min(k, len(relevant))


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        raise ValueError("NDCG is undefined for a user with no relevant items")
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]], truth: Mapping[str, set[str]], k: int = 10
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the users in ``truth`` (missing ranking = no hits): the
    two columns of :func:`evaluate_all` that `recsys train`'s table reports."""
    every = evaluate_all(rankings, truth, ks=(k,), map_ks=())
    return {key: every[key] for key in (f"recall@{k}", f"ndcg@{k}", "users")}


def map_at_k(ranked: Sequence[Hashable], relevant: set[Hashable], k: int) -> float:
    """Average precision at K, normalised by ``min(K, |relevant|)`` like Recall@K.

    The same normaliser keeps a user with many relevant items from being capped below 1.0
    (the Kaggle/H&M "MAP@12" convention).
    """
    if not relevant:
        raise ValueError("MAP is undefined for a user with no relevant items")
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k]):
        if item in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(relevant))


def hit_rate_at_k(ranked: Sequence[Hashable], relevant: set[Hashable], k: int) -> float:
    """1.0 when at least one relevant item is in the top K, else 0.0."""
    if not relevant:
        raise ValueError("hit rate is undefined for a user with no relevant items")
    return float(any(item in relevant for item in ranked[:k]))


def catalog_coverage(
    rankings: Mapping[Hashable, Sequence[Hashable]] | Sequence[Sequence[Hashable]],
    n_items: int,
    k: int,
) -> float:
    """Share of the ``n_items`` catalogue shown in at least one user's top K.

    Popularity scores well on accuracy while showing a handful of items; coverage makes that
    visible next to Recall.
    """
    if n_items <= 0:
        raise ValueError("catalog coverage needs n_items > 0")
    lists = rankings.values() if isinstance(rankings, Mapping) else rankings
    shown: set[Hashable] = set()
    for ranked in lists:
        shown.update(ranked[:k])
    return len(shown) / n_items


def evaluate_all(
    rankings: Mapping[Hashable, Sequence[Hashable]],
    truth: Mapping[Hashable, set[Hashable]],
    ks: Sequence[int] = (10, 20, 100),
    map_ks: Sequence[int] = (12,),
    n_items: int | None = None,
) -> dict[str, float]:
    """Every metric for every K in one pass, as a flat dict (``recall@10``, ``map@12``, ...).

    Averages over users of ``truth`` with at least one relevant item; a user without a ranking
    counts as all misses. MAP is reported at every K of ``ks`` and ``map_ks``. ``coverage@K``
    (over the rankings of the evaluated users) is added when ``n_items`` is given.
    """
    users = [u for u, rel in truth.items() if rel]
    if not users:
        raise ValueError("no user has a relevant item in the evaluation window")
    all_map_ks = sorted(set(ks) | set(map_ks))
    k_max = max([*ks, *all_map_ks])
    sums: dict[str, float] = {}
    for k in ks:
        for name in ("recall", "ndcg", "hit"):
            sums[f"{name}@{k}"] = 0.0
    for k in all_map_ks:
        sums[f"map@{k}"] = 0.0
    discounts = 1.0 / np.log2(np.arange(k_max) + 2)
    ideal_cum = np.cumsum(discounts)
    for u in users:
        rel = truth[u]
        ranked = list(rankings.get(u, ()))[:k_max]
        hits = np.zeros(k_max, dtype=np.float64)
        hits[: len(ranked)] = [item in rel for item in ranked]
        cum_hits = np.cumsum(hits)
        cum_dcg = np.cumsum(hits * discounts)
        cum_prec = np.cumsum(hits * cum_hits / np.arange(1, k_max + 1))
        n_rel = len(rel)
        for k in ks:
            denom = min(k, n_rel)
            sums[f"recall@{k}"] += cum_hits[k - 1] / denom
            sums[f"ndcg@{k}"] += cum_dcg[k - 1] / ideal_cum[denom - 1]
            sums[f"hit@{k}"] += float(cum_hits[k - 1] > 0)
        for k in all_map_ks:
            sums[f"map@{k}"] += cum_prec[k - 1] / min(k, n_rel)
    out: dict[str, float] = {key: float(value / len(users)) for key, value in sums.items()}
    if n_items:
        for k in ks:
            out[f"coverage@{k}"] = catalog_coverage(
                [rankings.get(u, ()) for u in users], n_items, k
            )
    out["users"] = len(users)
    return out


#: K points of the Recall@K / NDCG@K curves of ``recsys evaluate``'s report (capped at its k_max).
CURVE_KS = (1, 5, 10, 20, 50, 100)


def curve_ks(k_max: int, points: Sequence[int] = CURVE_KS) -> tuple[int, ...]:
    """``points`` up to ``k_max``, plus ``k_max`` itself so that a curve always ends where the
    rankings end (K=30 shows 1, 5, 10, 20, 30)."""
    return tuple(sorted({k for k in points if k <= k_max} | {k_max}))


def evaluate_with_curve(
    rankings: Mapping[Hashable, Sequence[Hashable]],
    truth: Mapping[Hashable, set[Hashable]],
    ks: Sequence[int] = (10, 20, 100),
    map_ks: Sequence[int] = (12,),
    n_items: int | None = None,
    curve: Sequence[int] = (),
) -> dict[str, Any]:
    """:func:`evaluate_all`'s flat metrics for ``ks`` / ``map_ks``, plus
    ``"curve": {"k": [...], "recall": [...], "ndcg": [...]}`` at the K points of ``curve``.

    One pass of :func:`evaluate_all` over the union of the Ks: the curve is the same
    computation as the table, so its value at K=10 *is* ``recall@10`` (not a second
    implementation that could drift). Only the keys of ``ks`` / ``map_ks`` stay flat, so the
    output has exactly the keys :func:`evaluate_all` gives for them (older readers unchanged).
    """
    every_k = sorted(set(ks) | set(curve))
    every = evaluate_all(rankings, truth, every_k, map_ks, n_items=n_items)
    keep = {f"{name}@{k}" for k in ks for name in ("recall", "ndcg", "hit", "map", "coverage")}
    keep |= {f"map@{k}" for k in map_ks} | {"users"}
    out: dict[str, Any] = {key: value for key, value in every.items() if key in keep}
    if curve:
        points = sorted(set(curve))
        out["curve"] = {
            "k": points,
            "recall": [every[f"recall@{k}"] for k in points],
            "ndcg": [every[f"ndcg@{k}"] for k in points],
        }
    return out


def popularity_deciles(
    item_ids: Sequence[Hashable], counts: Sequence[float]
) -> dict[Hashable, int]:
    """Decile (0 = the least popular tenth of the catalogue, 9 = the most popular) of each item
    by its training ``counts``.

    Deciles of *items* (each holds a tenth of the catalogue), not of interactions, so that a
    recommender spreading uniformly over the catalogue puts 10% in each: the reference a
    popularity-biased model visibly departs from. Ties are broken by the order of ``item_ids``
    (a stable sort), so equally popular items may straddle a boundary; items not given here
    (never seen in training) count as decile 0 in :func:`decile_shares`.
    """
    n = len(item_ids)
    if n != len(counts):
        raise ValueError(f"{n} item ids but {len(counts)} counts")
    order = np.argsort(np.asarray(counts, dtype=np.float64), kind="stable")
    decile = np.empty(n, dtype=np.int64)
    decile[order] = np.arange(n) * 10 // max(n, 1)
    return dict(zip(item_ids, decile.tolist(), strict=True))


def decile_shares(
    lists: Iterable[Iterable[Hashable]], decile_of: Mapping[Hashable, int], k: int | None = 10
) -> list[float]:
    """Share of all (top-``k``, or all with ``k=None``) listed items in each popularity decile.

    Shares are over item slots, so a user with a full top 10 weighs more than one with three
    items; they sum to 1 (all zeros when nothing is listed). An item without a decile (not in
    the training data, e.g. a new product the served pipeline reaches by content) counts in
    decile 0: it is less popular than any trained item.
    """
    counts = np.zeros(10, dtype=np.float64)
    for items in lists:
        for i, item in enumerate(items):
            if k is not None and i >= k:
                break
            counts[decile_of.get(item, 0)] += 1
    total = counts.sum()
    return (counts / total).tolist() if total else counts.tolist()


def next_item_metrics(top: np.ndarray, target: np.ndarray, pad: int = 0) -> dict[str, float]:
    """HR@K and MRR@K of one ranked list of item indices per step (row of ``top``) against one
    target item per step; a target equal to ``pad`` (unknown item) never hits."""
    k = top.shape[1]
    hits = (top == target[:, None]) & (target[:, None] != pad)
    found = hits.any(axis=1)
    rank = hits.argmax(axis=1) + 1
    return {
        f"hr@{k}": float(found.mean()) if len(found) else 0.0,
        f"mrr@{k}": float(np.where(found, 1.0 / rank, 0.0).mean()) if len(found) else 0.0,
    }
