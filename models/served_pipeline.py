"""The served pipeline: candidates -> LightGBM ranker -> business rules -> top k with reasons.

This module holds no HTTP and no Feast: it is called by the API for one visitor at a time and
by ``recsys evaluate`` for every test user, through the same :meth:`ServedPipeline.recommend`,
so the offline numbers are the numbers of what is served.

Business rules after ranking:

* already bought or browsed in this visit: excluded before any source runs (the visit's items
  may come back when the request says so: ``ItemFilters.hide_seen``);
* the request's filters (category, department, max price, in stock): pushed into the vector
  search as payload filters and applied to every other source by the catalogue's masks;
* diversity: at most ``max_category_share`` of the list from one category, and near-duplicates
  (the same title as an item already chosen, e.g. a product listed once per size or colour)
  removed; both are relaxed, in rank order, when too few items remain to fill ``k``.

Two pipelines are served this way, each with its own sources and ranker: the user pipeline
(:meth:`ServedPipeline.load`: a shopper's next purchases) and the session pipeline
(:meth:`ServedPipeline.load_session`: the next click of a visit, ranked without the diversity
rules, since a visit's next click is often the same kind of item).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.candidates import CandidateGenerator, CandidateSet
from models.context import NO_FILTERS, ItemFilters, UserContext, VectorSearch
from models.encoding import ItemEncoder, UserEncoder
from models.ranker import RANKER, Ranker
from models.two_tower import NumpyUserTower, TwoTower, load_two_tower
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.vocab import Vocabulary

#: The folder of a run that holds the session pipeline (its sources and ranker).
SESSION_PIPELINE = "session"


@dataclass
class RankedItem:
    item_id: str
    index: int
    score: float
    sources: list[str]
    reasons: list[str] = field(default_factory=list)


@dataclass
class Ranking:
    """A ranked answer and the sources that failed while producing it (degraded if any)."""

    items: list[RankedItem]
    failed: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    candidates: CandidateSet | None = None

    def item_ids(self) -> list[str]:
        return [r.item_id for r in self.items]


class ServedPipeline:
    """Everything one recommendation needs, loaded once per process."""

    def __init__(
        self,
        generator: CandidateGenerator,
        ranker: Ranker,
        model: TwoTower | None = None,
        users: UserEncoder | None = None,
        items: ItemEncoder | None = None,
        max_category_share: float = 0.5,
        dedupe_titles: bool = True,
    ) -> None:
        if ranker.feature_names != list(generator.features):
            raise ValueError(
                f"the ranker was trained on features {ranker.feature_names}, but the enabled "
                f"sources build {list(generator.features)}: retrain with `recsys train`, then "
                "`recsys index` (or enable the sources it was trained with)"
            )
        self.generator = generator
        self.catalog = generator.catalog
        self.ranker = ranker
        self.model = model
        # the user tower in numpy: one visitor's vector in ~50 us instead of a torch forward
        self.user_tower = NumpyUserTower.from_model(model) if model is not None else None
        self.users = users
        self.items = items
        self.max_category_share = max_category_share
        self.dedupe_titles = dedupe_titles

    @classmethod
    def load(
        cls,
        run: Run,
        settings: Settings,
        vector_search: VectorSearch | None,
        item_vectors: np.ndarray | None = None,
    ) -> ServedPipeline:
        """Everything ``recsys train`` saved in ``run``: the two-tower model and encoders, the
        candidate sources (the two-tower one asking ``vector_search``) and the ranker.
        ``item_vectors``: the run's, when the caller has read them already."""
        if not run.has(RANKER, "text"):
            raise FileNotFoundError(
                f"{run.part(RANKER, 'text')} is missing: the run was trained without the "
                "ranking stage; run `recsys train` (with RECSYS_RANKING__ENABLED=true)"
            )
        model, users, items = load_two_tower(run)
        ranker = Ranker.load(run, compile_to=_ranker_cache(settings))
        generator = CandidateGenerator.load(run, settings, items.vocab, vector_search, item_vectors)
        try:
            return cls(generator, ranker, model, users, items, settings.ranking.max_category_share)
        except ValueError as exc:
            raise ValueError(f"{run.part(RANKER, 'text')}: {exc}") from exc

    @classmethod
    def load_session(cls, run: Run, settings: Settings, vocab: Vocabulary) -> ServedPipeline | None:
        """The session pipeline ``recsys train`` saved in ``run`` (sources and ranker over the
        items of a visit), None when it has none (e.g. data without sessions)."""
        sub = run.sub(SESSION_PIPELINE)
        if not sub.has(RANKER, "text"):
            return None
        generator = CandidateGenerator.load(sub, settings, vocab, None, task="session")
        try:
            # a visit's next click is often the same kind of item, or the same one in another
            # colour: the session answer is the ranker's order, without diversity rules
            ranker = Ranker.load(sub, compile_to=_ranker_cache(settings))
            return cls(generator, ranker, max_category_share=1.0, dedupe_titles=False)
        except ValueError as exc:
            raise ValueError(f"{sub.part(RANKER, 'text')}: {exc}") from exc

    # ------------------------------------------------------------------ context
    def user_vector(self, features: Mapping[str, Sequence[Any]]) -> np.ndarray | None:
        """The two-tower user vector from one Feast row in ``to_dict()`` shape."""
        if self.user_tower is None or self.users is None or self.items is None:
            return None
        inputs = self.users.encode(features, self.items)
        return self.user_tower(inputs["user_idx"], inputs["user_numeric"], inputs["history"])[0]

    def context(
        self,
        user_id: str | None,
        features: Mapping[str, Any] | None,
        session: Sequence[str] = (),
        vector: np.ndarray | None = None,
    ) -> UserContext:
        """A visitor from their Feast row (None: nothing known) and this visit's items."""
        features = dict(features or {})
        history = [h for h in (features.get("purchased_items") or []) if h]
        if vector is None and (features or session):
            row = {k: [v] for k, v in features.items()}
            row["user_id"] = [user_id or ""]
            row["purchased_items"] = [list(dict.fromkeys([*session, *history]))]
            vector = self.user_vector(row)
        return UserContext(user_id, history, list(session), features, vector)

    # ------------------------------------------------------------------ ranking
    def recommend(
        self,
        ctx: UserContext,
        k: int,
        filters: ItemFilters = NO_FILTERS,
        keep_candidates: bool = False,
    ) -> Ranking:
        """The top ``k`` after ranking and business rules, each with sources and reasons.

        ``keep_candidates``: attach the candidate set (offline analysis of the sources).
        """
        cand = self.generator.generate(ctx, filters)
        timings = dict(cand.timings_ms)
        kept = cand if keep_candidates else None
        if len(cand) == 0:
            return Ranking([], cand.failed, timings, kept)
        t0 = time.perf_counter()
        scores = self.ranker.predict(cand.features)
        t1 = time.perf_counter()
        order = np.argsort(-scores, kind="stable")
        chosen = self._diversify(cand, order, k)
        items = [self._explain(cand, pos, float(scores[pos]), ctx) for pos in chosen]
        timings["ranker"] = (t1 - t0) * 1e3
        timings["rules"] = (time.perf_counter() - t1) * 1e3
        return Ranking(items, cand.failed, timings, kept)

    def _diversify(self, cand: CandidateSet, order: np.ndarray, k: int) -> list[int]:
        cap = max(1, math.ceil(self.max_category_share * k))
        per_category: dict[int, int] = {}
        titles: set[str] = set()
        chosen: list[int] = []
        skipped: list[int] = []
        unknown = 0  # category code of "unknown": not capped (no information)
        for pos in order.tolist():
            if len(chosen) == k:
                break
            item = int(cand.items[pos])
            category = int(self.catalog.category[item])
            title = self.catalog.titles[item].strip().lower() if self.dedupe_titles else ""
            if title and title in titles:
                skipped.append(pos)
                continue
            if category != unknown and per_category.get(category, 0) >= cap:
                skipped.append(pos)
                continue
            chosen.append(pos)
            per_category[category] = per_category.get(category, 0) + 1
            if title and title != self.catalog.item_id(item).lower():
                titles.add(title)
        if len(chosen) < k:  # relax the rules rather than return a short list
            chosen += skipped[: k - len(chosen)]
        return chosen

    def _explain(self, cand: CandidateSet, pos: int, score: float, ctx: UserContext) -> RankedItem:
        item = int(cand.items[pos])
        names, reasons = [], []
        for source in self.generator.sources:
            if not cand.sources[source.name][pos]:
                continue
            names.append(source.name)
            reason = source.reason(ctx, self.catalog, int(cand.seeds[source.name][pos]))
            if reason:
                reasons.append(reason)
        return RankedItem(self.catalog.item_id(item), item, score, names, reasons)


__all__ = ["ServedPipeline", "RankedItem", "Ranking"]


def _ranker_cache(settings: Settings) -> Path | None:
    """Where serving's compiled rankers go; None serves with LightGBM's own predict."""
    return settings.ranker_cache_dir if settings.ranking.compiled else None
