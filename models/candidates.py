"""Candidate generation and ranking features, shared by ranker training and serving.

One visitor (a :class:`~models.context.UserContext`) goes in; the union of every enabled
source's candidates comes out as a :class:`CandidateSet`: item indices, one feature row per
item for the ranker, and which source proposed each item and from which seed (for the
response's reasons). The same code builds the ranker's training rows, answers API requests and
runs the served pipeline in ``recsys evaluate``, so the three cannot drift apart.

The sources are plug-ins (``models/sources/``): each proposes up to its own ``k`` items and
fills its feature columns for *every* candidate, so the ranker can weigh a popular item against
the history too. After the sources' columns come the context features of this module: how many
sources proposed the item, its demand and price, and the visitor's history and affinities.

Items are addressed by vocabulary index (0 = unknown), the two-tower encoder's vocabulary,
which is also the vector store's point id.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.context import NO_FILTERS, ItemCatalog, ItemFilters, UserContext, VectorSearch
from models.popularity import top_items
from models.session.data import Sessions
from models.sources import (
    MISSING_RANK,
    CandidateSource,
    Request,
    SourceData,
    Task,
    enabled_sources,
)
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.values import finite_float
from recsys.core.vocab import Vocabulary

log = logging.getLogger(__name__)

#: Ranker columns after the sources' own: the item's demand and price, the visitor's history,
#: and ``seen_recency``: 1 / steps back for an item already viewed in this visit (0: not seen),
#: since going back to an item is a common next click when the visit's items may come back.
CONTEXT_FEATURES: tuple[str, ...] = (
    "n_sources", "seen_recency",
    "item_log_count", "item_log_recent", "item_recent_share", "item_log_price",
    "user_log_history", "user_age", "user_days_since_purchase", "user_log_purchases_30d",
    "aff_category", "aff_colour", "aff_department", "price_ratio",
)  # fmt: skip
CATALOG = "item_catalog"  # its part of a run folder
CATALOG_COLUMNS = ("item_id", "title", "category", "colour", "department", "price", "in_stock")


@dataclass
class CandidateSet:
    """Candidates of one visitor: indices, ranker features, and evidence for the reasons."""

    items: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    sources: dict[str, np.ndarray]  # source -> bool mask over items: its own candidates
    seeds: dict[str, np.ndarray]  # source -> item index behind each candidate (0: none)
    failed: list[str] = field(default_factory=list)  # sources that raised (degraded answer)
    timings_ms: dict[str, float] = field(default_factory=dict)  # per source, then features

    def __len__(self) -> int:
        return len(self.items)

    def column(self, name: str) -> np.ndarray:
        return self.features[:, self.feature_names.index(name)]


class CandidateGenerator:
    """Runs every enabled source for one visitor and builds the ranker's feature rows."""

    def __init__(
        self,
        catalog: ItemCatalog,
        sources: list[CandidateSource],
        history_seeds: int = 50,
        catalog_rows: pd.DataFrame | None = None,
        max_prefix: int = 20,
    ) -> None:
        """``catalog_rows``: the frame ``catalog`` was built from (what :meth:`save` writes).
        ``max_prefix``: the newest items of a visit the session models read."""
        self.catalog = catalog
        self.catalog_rows = catalog_rows
        self.sources = sources
        self.history_seeds = history_seeds
        self.max_prefix = max_prefix
        self.features: tuple[str, ...] = (
            *(name for source in sources for name in source.features),
            *CONTEXT_FEATURES,
        )
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"two candidate sources fill the same ranker column: {self.features}")
        self._col = {name: i for i, name in enumerate(self.features)}

    def source(self, name: str) -> CandidateSource | None:
        """The enabled source called ``name``, None when it is off."""
        return next((s for s in self.sources if s.name == name), None)

    # ------------------------------------------------------------------ fit / save / load
    @classmethod
    def fit(
        cls,
        settings: Settings,
        vocab: Vocabulary,
        purchases: pd.DataFrame,
        items: pd.DataFrame,
        user_segments: pd.DataFrame | None,
        end: pd.Timestamp,
        item_vectors: np.ndarray | None,
        task: Task = "user",
        sessions: Sessions | None = None,
        derive_held_out: bool = False,
    ) -> CandidateGenerator:
        """Fit every enabled source of ``task`` on ``purchases`` (user_id, item_id, timestamp:
        the signal events) and ``sessions`` (coded in ``vocab``).

        ``items``: catalogue rows (:data:`CATALOG_COLUMNS`, any order); ``end``: where the
        recency windows end; ``item_vectors``: the run's two-tower item vectors;
        ``derive_held_out``: :meth:`held_out` will be called (sources keep what it needs).
        """
        enabled = enabled_sources(settings, task)
        frame = catalog_frame(items, purchases, end, settings.ranking.recent_days)
        catalog = ItemCatalog.from_frame(vocab, frame)
        data = SourceData(settings, catalog, purchases, items, user_segments, end, item_vectors,
                          sessions=sessions, derive_held_out=derive_held_out)  # fmt: skip
        sources = [cls_.fit(data, cfg) for cls_, cfg in enabled]
        return cls(catalog, sources, settings.ranking.history_seeds, frame,
                   settings.sessions.max_prefix)  # fmt: skip

    def held_out(
        self,
        settings: Settings,
        vocab: Vocabulary,
        purchases: pd.DataFrame,
        labels: pd.DataFrame,
        items: pd.DataFrame,
        user_segments: pd.DataFrame | None,
        end: pd.Timestamp,
        item_vectors: np.ndarray | None,
    ) -> CandidateGenerator:
        """The generator of the ranker's training rows, as if fitted on ``purchases`` (this
        fit's purchases less ``labels``: user_id, item_id) with the arguments of :meth:`fit`:
        the catalogue's demand from ``purchases``, each source through
        :meth:`~models.sources.CandidateSource.held_out` (fitted again, or derived from this
        fit without each visitor's own labels)."""
        frame = catalog_frame(items, purchases, end, settings.ranking.recent_days)
        catalog = ItemCatalog.from_frame(vocab, frame)
        data = SourceData(settings, catalog, purchases, items, user_segments, end, item_vectors)
        sources = [source.held_out(data, labels) for source in self.sources]
        return CandidateGenerator(catalog, sources, self.history_seeds, frame, self.max_prefix)

    def save(self, run: Run) -> None:
        if self.catalog_rows is None:
            raise ValueError("this generator was built without its catalogue rows: nothing to save")
        run.write_table(CATALOG, self.catalog_rows)
        for source in self.sources:
            source.save(run)

    @classmethod
    def load(
        cls,
        run: Run,
        settings: Settings,
        vocab: Vocabulary,
        vector_search: VectorSearch | None,
        item_vectors: np.ndarray | None = None,
        task: Task = "user",
    ) -> CandidateGenerator:
        """The generator of ``task`` that ``recsys train`` saved in ``run``, its two-tower
        source asking ``vector_search``; ``item_vectors``: the run's, when the caller has read
        them."""
        frame = run.read_table(CATALOG)
        catalog = ItemCatalog.from_frame(vocab, frame)
        data = SourceData(settings, catalog, item_vectors=item_vectors,
                          vector_search=vector_search)  # fmt: skip
        sources = [cls_.load(run, cfg, data) for cls_, cfg in enabled_sources(settings, task)]
        return cls(catalog, sources, settings.ranking.history_seeds, frame,
                   settings.sessions.max_prefix)  # fmt: skip

    def describe(self) -> str:
        return ", ".join(f"{s.name} ({s.describe()})" if s.describe() else s.name
                         for s in self.sources)  # fmt: skip

    # ------------------------------------------------------------------ one visitor
    def session_of(self, ctx: UserContext) -> np.ndarray:
        """The visit as the session models read it: its newest ``max_prefix`` known items,
        oldest first, as catalogue indices."""
        session = self.catalog.indices(ctx.session[: self.max_prefix])[::-1]
        return session[session > 0]

    def seeds_of(self, ctx: UserContext) -> np.ndarray:
        """The known items the behavioural sources start from (``Request.seeds``): the
        newest ``history_seeds`` of the visit and the history, as catalogue indices."""
        seeds = self.catalog.indices(ctx.seeds(self.history_seeds))
        return seeds[seeds > 0]

    def prime(self, contexts: Sequence[UserContext]) -> None:
        """Let every source do at once what is cheaper in a batch for these coming visitors
        (:meth:`CandidateSource.prime`); :meth:`generate` answers as without (to the float
        rounding of a batched product)."""
        seeds = [self.seeds_of(ctx) for ctx in contexts]
        sessions = [self.session_of(ctx) for ctx in contexts]
        for source in self.sources:
            source.prime(contexts, seeds, sessions)

    def generate(self, ctx: UserContext, filters: ItemFilters = NO_FILTERS) -> CandidateSet:
        cat = self.catalog
        allowed = cat.allowed(filters)
        hidden = [*ctx.history, *ctx.session] if filters.hide_seen else ctx.history
        excluded = cat.indices(hidden)
        seeds = self.seeds_of(ctx)
        session = self.session_of(ctx)
        blocked = np.zeros(cat.n_items, dtype=bool)
        blocked[0] = True
        blocked[excluded] = True
        if allowed is not None:
            blocked |= ~allowed
        req = Request(ctx, filters, cat, seeds, excluded, blocked, session)

        ms: dict[str, float] = {}
        failed: list[str] = []
        proposals = {}
        clock = time.perf_counter()
        for source in self.sources:
            try:
                proposals[source.name] = source.propose(req, source.cfg.k)
            except Exception as exc:
                if not source.degrades:
                    raise
                # one line per request: the traceback only at debug level
                log.warning("%s candidates failed (%s: %s): answering from the other sources",
                            source.name, type(exc).__name__, exc)  # fmt: skip
                log.debug("%s candidates failed", source.name, exc_info=True)
                failed.append(source.name)
                proposals[source.name] = None
            clock = _lap(ms, source.name, clock)
        pools = [p.items for p in proposals.values() if p is not None]
        if not pools:
            return self._empty_set(failed)
        items = np.unique(np.concatenate(pools))
        features = np.full((len(items), len(self.features)), np.nan, dtype=np.float32)
        col = self._col
        masks: dict[str, np.ndarray] = {}
        seeds_of: dict[str, np.ndarray] = {}
        for source in self.sources:
            own = proposals[source.name]
            for name, values in source.evidence(req, items, own).items():
                features[:, col[name]] = values
            mask = np.zeros(len(items), dtype=bool)
            seed = np.zeros(len(items), dtype=np.int64)
            if own is not None:
                pos = np.searchsorted(items, own.items)
                mask[pos] = True
                if own.seeds is not None:
                    seed[pos] = own.seeds
            masks[source.name] = mask
            seeds_of[source.name] = seed
        features[:, col["n_sources"]] = np.sum(list(masks.values()), axis=0)
        recency = np.zeros(len(items), dtype=np.float32)
        for back, index in enumerate(req.session[::-1].tolist(), start=1):
            hit = items == index
            recency[hit & (recency == 0)] = 1.0 / back
        features[:, col["seen_recency"]] = recency
        self._item_and_user_features(features, col, items, seeds, ctx)
        _lap(ms, "candidate_features", clock)
        return CandidateSet(items, features, self.features, masks, seeds_of, failed, ms)

    def _item_and_user_features(
        self,
        features: np.ndarray,
        col: dict[str, int],
        items: np.ndarray,
        seeds: np.ndarray,
        ctx: UserContext,
    ) -> None:
        cat = self.catalog
        features[:, col["item_log_count"]] = np.log1p(cat.counts[items])
        features[:, col["item_log_recent"]] = np.log1p(cat.recent_counts[items])
        # momentum from the same purchases the sources were fitted on: Feast's item_trend
        # would count the ranker's held-out labels too and leak them into training rows
        features[:, col["item_recent_share"]] = cat.recent_counts[items] / np.maximum(
            cat.counts[items], 1.0
        )
        features[:, col["item_log_price"]] = np.log1p(np.clip(cat.price[items], 0, None))
        f = ctx.features
        features[:, col["user_log_history"]] = math.log1p(len(ctx.history))
        features[:, col["user_age"]] = finite_float(f.get("age"))
        features[:, col["user_days_since_purchase"]] = finite_float(
            f.get("days_since_last_purchase")
        )
        features[:, col["user_log_purchases_30d"]] = math.log1p(
            max(finite_float(f.get("purchases_30d"), 0.0), 0.0)
        )
        if len(seeds):
            for name, codes in (
                ("aff_category", cat.category),
                ("aff_colour", cat.colour),
                ("aff_department", cat.department),
            ):
                share = np.bincount(codes[seeds], minlength=int(codes.max()) + 1) / len(seeds)
                features[:, col[name]] = share[codes[items]]
            paid = cat.price[seeds]
            paid = paid[np.isfinite(paid)]
            if len(paid) and paid.mean() > 0:
                features[:, col["price_ratio"]] = cat.price[items] / paid.mean()

    def _empty_set(self, failed: list[str]) -> CandidateSet:
        empty = np.empty(0, dtype=np.int64)
        return CandidateSet(
            empty, np.empty((0, len(self.features)), dtype=np.float32), self.features,
            {s.name: np.empty(0, dtype=bool) for s in self.sources},
            {s.name: empty for s in self.sources}, failed,
        )  # fmt: skip


def catalog_frame(
    items: pd.DataFrame, purchases: pd.DataFrame, end: pd.Timestamp, recent_days: int
) -> pd.DataFrame:
    """Catalogue rows with their purchase counts, all-time and in the last ``recent_days``
    before ``end``: demand computed from the same purchases as the sources, so ranker
    training rows and serving rows see it the same way."""
    since = end - pd.Timedelta(days=recent_days)
    counts = top_items(purchases).set_index("item_id")["purchases"].rename("count")
    recent_counts = top_items(purchases, since).set_index("item_id")["purchases"]
    recent_counts = recent_counts.rename("recent_count")
    frame = items[[c for c in CATALOG_COLUMNS if c in items]].drop_duplicates("item_id")
    frame = frame.merge(counts, on="item_id", how="left").merge(
        recent_counts, on="item_id", how="left"
    )
    frame[["count", "recent_count"]] = frame[["count", "recent_count"]].fillna(0)
    return frame


def own_order(
    source: type[CandidateSource] | CandidateSource,
    features: np.ndarray,
    feature_names: tuple[str, ...],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Row positions of ``source``'s own candidates, in the order that source ranks them: the
    source alone, to compare the ranker with each of its inputs. ``rows``: the source's
    candidates when known (``CandidateSet.sources``), else read from its marker column."""
    if rows is None:
        marker = features[:, feature_names.index(source.marker)]
        rows = np.flatnonzero(np.isfinite(marker) & (marker < MISSING_RANK))
    column, descending = source.order
    values = features[rows, feature_names.index(column)].astype(np.float64)
    return rows[np.argsort(-values if descending else values, kind="stable")]


def _lap(timings: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    timings[stage] = (now - since) * 1e3
    return now
