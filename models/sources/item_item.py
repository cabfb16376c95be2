"""Item-item source: EASE (or cosine) neighbours summed over the visitor's history.

Its evidence covers every candidate, not only its own: the summed weight from the history, how
many history items point at the candidate and the strongest single weight (0 when none does,
NaN when there is no history), so the ranker can weigh a popular item against the history too.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from models.baselines import InteractionMatrix
from models.context import ItemCatalog, UserContext
from models.item_item import ItemNeighbors
from models.sources import register
from models.sources.base import CandidateSource, Proposal, Request, SourceData
from recsys.core.arrays import top_k
from recsys.core.run import Run
from recsys.core.settings import ItemItemSourceSettings

PAD = "\x00pad"  # column 0 of the interaction matrix: the vocabulary's "unknown item"


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
        matrix = InteractionMatrix.from_frame(
            data.purchases, item_ids=[PAD, *data.catalog.item_ids]
        ).matrix
        return cls(cfg, ItemNeighbors.fit(
            matrix, cfg.method, cfg.neighbours, cfg.ease_lambda, cfg.ease_memory_gb
        ))  # fmt: skip

    def save(self, run: Run) -> None:
        self.neighbours.save(run)

    @classmethod
    def load(cls, run: Run, cfg: ItemItemSourceSettings, data: SourceData) -> Self:
        return cls(cfg, ItemNeighbors.load(run))

    def describe(self) -> str:
        return self.neighbours.method

    def summary(self) -> dict[str, Any]:
        return {"method": self.neighbours.method, **self.neighbours.params}

    def propose(self, req: Request, k: int) -> Proposal | None:
        """Every item reachable from the seeds with its summed, hit-count and best single
        weight (kept as ``state`` for :meth:`evidence`); the ``k`` best by sum are its own."""
        if len(req.seeds) == 0:
            return None
        cols, weights, rows = self.neighbours.gather(req.seeds)
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
