"""Item-item source: EASE (or cosine) neighbours summed over the visitor's history.

Its evidence covers every candidate, not only its own: the summed weight from the history, how
many history items point at the candidate and the strongest single weight (0 when none does,
NaN when there is no history), so the ranker can weigh a popular item against the history too.

For the ranker's training rows the EASE fit on everything answers each label user without their
own held-out purchase (:class:`HeldOutItemItemSource`), so EASE's dense inverse is computed once
per ``recsys train``, not once for the rows and again for serving.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd

from models.context import ItemCatalog, UserContext
from models.item_item import HeldOutEase, ItemNeighbors
from models.sources import register
from models.sources.base import CandidateSource, Proposal, Request, SourceData
from recsys.core.arrays import top_k
from recsys.core.run import Run
from recsys.core.settings import ItemItemSourceSettings


@register
class ItemItemSource(CandidateSource):
    name = "item_item"
    features = ("ii_score", "ii_rank", "ii_hits", "ii_max")
    score_feature = "ii_score"
    rank_feature = "ii_rank"
    order = ("ii_score", True)
    marker = "ii_rank"
    settings_model = ItemItemSourceSettings
    tasks = ("user", "session")  # a visit's items are seeds as a history's are

    def __init__(self, cfg: ItemItemSourceSettings, neighbours: ItemNeighbors) -> None:
        super().__init__(cfg)
        self.neighbours = neighbours

    @classmethod
    def fit(cls, data: SourceData, cfg: ItemItemSourceSettings) -> Self:
        return cls(cfg, ItemNeighbors.fit(
            data.purchase_matrix(), cfg.method, cfg.neighbours, cfg.ease_lambda, cfg.ease_memory_gb,
            keep_dense=data.derive_held_out, ease_support=cfg.ease_support,
        ))  # fmt: skip

    def held_out(self, data: SourceData, labels: pd.DataFrame) -> ItemItemSource:
        """EASE's rows without each label user's own labels, derived from this fit (which
        hands its dense weights over: they are freed with the view); ease_local and cosine,
        which have no dense inverse to derive from, are fitted again."""
        dense, self.neighbours.dense = self.neighbours.dense, None
        if dense is None:
            return type(self).fit(data, self.cfg)
        return HeldOutItemItemSource(self.cfg, self.neighbours, dense, data, labels)

    def save(self, run: Run) -> None:
        self.neighbours.save(run)

    @classmethod
    def load(cls, run: Run, cfg: ItemItemSourceSettings, data: SourceData) -> Self:
        return cls(cfg, ItemNeighbors.load(run))

    def describe(self) -> str:
        return self.neighbours.method

    def summary(self) -> dict[str, Any]:
        return {"method": self.neighbours.method, **self.neighbours.params}

    def gather(self, req: Request) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The seeds' neighbour rows: :meth:`ItemNeighbors.gather`'s (columns, weights, row)."""
        return self.neighbours.gather(req.seeds)

    def propose(self, req: Request, k: int) -> Proposal | None:
        """Every item reachable from the seeds with its summed, hit-count and best single
        weight (kept as ``state`` for :meth:`evidence`); the ``k`` best by sum are its own."""
        if len(req.seeds) == 0:
            return None
        cols, weights, rows = self.gather(req)
        keep = ~req.blocked[cols]
        cols, weights, rows = cols[keep], weights[keep], rows[keep]
        if len(cols) == 0:  # a history, but no link from it: evidence 0, not missing
            empty = np.empty(0, dtype=np.int64)
            return Proposal(empty, np.empty(0), empty, state=None)
        items, inverse = np.unique(cols, return_inverse=True)
        sums = np.bincount(inverse, weights=weights)
        hits = np.bincount(inverse).astype(np.float64)
        # the history item with the largest single weight explains the candidate
        order = np.lexsort((-weights, inverse))
        first = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
        best_row = rows[order][first]
        best_weight = weights[order][first]
        top = top_k(sums, k)
        return Proposal(items[top], sums[top], best_row[top],
                        state=(items, sums, hits, best_weight))  # fmt: skip

    def evidence(
        self, req: Request, items: np.ndarray, own: Proposal | None
    ) -> dict[str, np.ndarray]:
        out = super().evidence(req, items, own)
        if own is None:  # no history: nothing known (NaN)
            for name in ("ii_hits", "ii_max"):
                out[name] = np.full(len(items), np.nan)
            return out
        if own.state is None:
            for name in ("ii_score", "ii_hits", "ii_max"):
                out[name] = np.zeros(len(items))
            return out
        reached, sums, hits, best_weight = own.state
        pos = np.minimum(np.searchsorted(reached, items), len(reached) - 1)
        hit = reached[pos] == items
        for name, values in (("ii_score", sums), ("ii_hits", hits), ("ii_max", best_weight)):
            out[name] = np.where(hit, values[pos], 0.0)
        return out

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        if not seed:
            return None
        verb = "viewed" if catalog.item_id(seed) in ctx.session else "bought"
        return f"similar to {catalog.display_name(seed)} you {verb}"


class HeldOutItemItemSource(ItemItemSource):
    """The item-item source of the ranker's training rows: a label user's seeds gather EASE's
    rows as fitted without their own held-out items (:class:`HeldOutEase`), every other
    visitor the rows of the fit on everything. Not registered: only ``held_out`` makes one."""

    def __init__(
        self,
        cfg: ItemItemSourceSettings,
        neighbours: ItemNeighbors,
        dense: HeldOutEase,
        data: SourceData,
        labels: pd.DataFrame,
    ) -> None:
        super().__init__(cfg, neighbours)
        self.dense = dense
        self.held = _items_by_user(labels, data.catalog)
        purchases = data.purchases if data.purchases is not None else labels.iloc[:0]
        self.kept = _items_by_user(purchases[purchases["user_id"].isin(self.held)], data.catalog)

    def describe(self) -> str:
        return "ease, each label user's own labels left out"

    def gather(self, req: Request) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        held = self.held.get(req.ctx.user_id)
        if held is None:
            return self.neighbours.gather(req.seeds)
        kept = self.kept.get(req.ctx.user_id, np.empty(0, dtype=np.int64))
        return self.dense.gather(kept, held, req.seeds)


def _items_by_user(frame: pd.DataFrame, catalog: ItemCatalog) -> dict[str, np.ndarray]:
    """user_id -> the distinct catalogue indices of their rows in ``frame`` (unknown ones out)."""
    coded = pd.DataFrame(
        {"user_id": frame["user_id"].to_numpy(),
         "item": catalog.indices(frame["item_id"].tolist())}
    )  # fmt: skip
    coded = coded[coded["item"] > 0].drop_duplicates()
    return {u: g.to_numpy(np.int64) for u, g in coded.groupby("user_id", sort=False)["item"]}
