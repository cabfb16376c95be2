"""Popular source: best sellers of the visitor's age bucket (or everyone's) in a recent window.

The same table answers ``GET /popular`` and is the whole answer for a visitor nothing is known
about. Its feature is the rank (lower is better).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from models.context import ItemCatalog, UserContext
from models.popularity import PopularityTable, segment_popularity
from models.sources import register
from models.sources.base import CandidateSource, Proposal, Request, SourceData
from recsys.core.run import Run
from recsys.core.settings import PopularSourceSettings

SEGMENTS = "popular_segments"  # its part of a run folder


@register
class PopularSource(CandidateSource):
    name = "popular"
    features = ("pop_rank",)
    rank_feature = "pop_rank"
    order = ("pop_rank", False)
    marker = "pop_rank"
    settings_model = PopularSourceSettings
    tasks = ("user", "session")

    def __init__(self, cfg: PopularSourceSettings, frame: pd.DataFrame) -> None:
        super().__init__(cfg)
        self.frame = frame  # segment_popularity output, as saved
        self.table = PopularityTable.from_frame(frame)

    @classmethod
    def fit(cls, data: SourceData, cfg: PopularSourceSettings) -> Self:
        items = data.items[["item_id", "category"]]
        return cls(cfg, segment_popularity(data.purchases, items, data.user_segments, end=data.end))

    def save(self, run: Run) -> None:
        run.write_table(SEGMENTS, self.frame)

    @classmethod
    def load(cls, run: Run, cfg: PopularSourceSettings, data: SourceData) -> Self:
        return cls(cfg, run.read_table(SEGMENTS))

    def propose(self, req: Request, k: int) -> Proposal | None:
        window = self.cfg.window
        if window not in self.table.windows:  # nothing sold in it: all-time counts
            window = self.table.windows[-1]
        top = self.table.top(
            # room for what the visitor has (the category filter is applied by the table
            # itself; other filters may leave fewer than ``k``)
            k + min(len(req.excluded), 500),
            window=window, category=req.filters.category, age_bucket=req.ctx.age_bucket,
        )  # fmt: skip
        idx = req.catalog.indices([t[0] for t in top])
        keep = np.flatnonzero(~req.blocked[idx])[:k]
        return Proposal(idx[keep], np.arange(1, len(keep) + 1, dtype=np.float64))

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        who = f" with shoppers aged {ctx.age_bucket}" if ctx.age_bucket else ""
        return f"popular right now{who}"
