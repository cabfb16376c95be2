"""Popularity: the fallback for unknown visitors and the baseline every model must beat."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd


def top_items(purchases: pd.DataFrame, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """Items by purchase count (``since``: only purchases at or after it), most popular first.

    Returns columns ``item_id``, ``purchases``, ``score`` (share of all counted purchases).
    """
    rows = purchases if since is None else purchases[purchases["timestamp"] >= since]
    counts = rows.groupby("item_id").size().sort_values(ascending=False, kind="stable")
    out = counts.rename("purchases").reset_index()
    out["score"] = out["purchases"] / max(int(out["purchases"].sum()), 1)
    return out


def recommend_popular(
    ranking: list[str], seen: Mapping[str, set[str]], users: list[str], k: int
) -> dict[str, list[str]]:
    """The same popular list for everyone, minus what each user already bought."""
    out: dict[str, list[str]] = {}
    for u in users:
        bought = seen.get(u, set())
        out[u] = [i for i in ranking[: k + len(bought)] if i not in bought][:k]
    return out
