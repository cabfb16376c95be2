"""Ranking metrics for top-K recommendation, one definition for every model.

Recall@K divides the hits in the top K by ``min(K, number of relevant items)`` so that a user
with many relevant items can still reach 1.0; NDCG@K uses binary relevance and the same ideal.
Metrics are averaged over users that have at least one relevant item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    """Mean Recall@K and NDCG@K over the users in ``truth`` (missing ranking = no hits)."""
    users = [u for u, rel in truth.items() if rel]
    if not users:
        raise ValueError("no user has a relevant item in the evaluation window")
    recalls = [recall_at_k(rankings.get(u, ()), truth[u], k) for u in users]
    ndcgs = [ndcg_at_k(rankings.get(u, ()), truth[u], k) for u in users]
    return {f"recall@{k}": float(np.mean(recalls)), f"ndcg@{k}": float(np.mean(ndcgs)),
            "users": len(users)}  # fmt: skip
