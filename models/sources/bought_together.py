"""Bought-together source: association rules of the visitor's most recent items.

A consequent scores the best confidence any recent item's rule gives it; the winning rule's lift
is a second feature and its antecedent the reason ("often bought together with ...").
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd

from models.association_rules import BoughtTogether, load_rules, mine_rules, save_rules
from models.context import ItemCatalog, UserContext
from models.sources import register
from models.sources.base import CandidateSource, Proposal, Request, SourceData
from recsys.core.run import Run
from recsys.core.settings import BoughtTogetherSourceSettings


@register
class BoughtTogetherSource(CandidateSource):
    name = "bought_together"
    features = ("bt_confidence", "bt_lift")
    score_feature = "bt_confidence"
    order = ("bt_confidence", True)
    marker = "bt_confidence"
    settings_model = BoughtTogetherSourceSettings

    def __init__(self, cfg: BoughtTogetherSourceSettings, frame: pd.DataFrame) -> None:
        super().__init__(cfg)
        self.frame = frame  # mine_rules output, as saved
        self.rules = BoughtTogether.from_frame(frame)

    @classmethod
    def fit(cls, data: SourceData, cfg: BoughtTogetherSourceSettings) -> Self:
        return cls(cfg, mine_rules(
            data.purchases, min_pair_baskets=cfg.min_pair_baskets, top_n=cfg.per_item
        ))  # fmt: skip

    def save(self, run: Run) -> None:
        save_rules(self.frame, run)

    @classmethod
    def load(cls, run: Run, cfg: BoughtTogetherSourceSettings, data: SourceData) -> Self:
        return cls(cfg, load_rules(run))

    def describe(self) -> str:
        return f"{len(self.frame):,} rules"

    def summary(self) -> dict[str, Any]:
        return {"rules": len(self.frame)}

    def propose(self, req: Request, k: int) -> Proposal | None:
        if len(req.seeds) == 0:
            return None
        cat = req.catalog
        recent = [cat.item_id(int(s)) for s in req.seeds[: self.cfg.seeds]]
        rules = self.rules.for_items_with_lift(recent, k * 3)
        idx = cat.indices([r[0] for r in rules])
        take = np.flatnonzero(~req.blocked[idx])[:k]
        return Proposal(
            idx[take],
            np.array([rules[j][1] for j in take.tolist()], dtype=np.float64),
            seeds=cat.indices([rules[j][2] for j in take.tolist()]),
            extra={"bt_lift": np.array([rules[j][3] for j in take.tolist()], dtype=np.float64)},
        )

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        if not seed:
            return None
        return f"often bought together with {catalog.display_name(seed)}"
