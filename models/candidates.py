"""Candidate generation and ranking features, shared by ranker training and serving.

One user (a :class:`UserContext`) goes in; the union of every source's candidates comes out as
a :class:`CandidateSet`: item indices, one feature row per item for the ranker, and which source
proposed each item with its evidence (for the response's ``reasons``). The same code builds the
ranker's training rows, answers API requests and runs the served pipeline in ``recsys
evaluate``, so the three cannot drift apart.

Sources (each optional, each capped at its own ``k``):

* ``item_item``: EASE (or cosine) neighbours summed over the user's history.
* ``two_tower``: nearest item vectors to the user vector (the vector store in serving).
* ``bought_together``: association rules of the most recent items.
* ``popular``: popularity in the user's age bucket (or overall) over a recent window.

Each source's evidence is filled in for *every* candidate, not only its own: the item-item
sum, hit count and strongest single weight over the history (0 when no history item points
at it), and the two-tower cosine when the item vectors are known. The ranker can then weigh
a popular item against the history too; ranks (``ii_rank``, ``tt_rank``, ``pop_rank``) stay
per source and mark its own candidates.

Items are addressed by vocabulary index (0 = unknown), the two-tower encoder's vocabulary,
which is also the vector store's point id.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.association_rules import BoughtTogether
from models.item_item import ItemNeighbors
from models.popularity import PopularityTable

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
MISSING_RANK = 1000.0  # rank feature of a source that did not propose the item

FEATURES: tuple[str, ...] = (
    "ii_score", "ii_rank", "ii_hits", "ii_max",
    "tt_score", "tt_rank",
    "bt_confidence", "bt_lift",
    "pop_rank",
    "n_sources",
    "item_log_count", "item_log_recent", "item_recent_share", "item_log_price",
    "user_log_history", "user_age", "user_days_since_purchase", "user_log_purchases_30d",
    "aff_category", "aff_colour", "aff_department", "price_ratio",
)  # fmt: skip
SOURCES = ("item_item", "two_tower", "bought_together", "popular")
#: How each source orders its own candidates: (feature column, higher is better).
SOURCE_ORDER: dict[str, tuple[str, bool]] = {
    "item_item": ("ii_score", True),
    "two_tower": ("tt_score", True),
    "bought_together": ("bt_confidence", True),
    "popular": ("pop_rank", False),
}
#: The column that marks a source's own candidates in a feature row (scores such as
#: ``ii_score`` and ``tt_score`` are filled in for every candidate, ranks only for its own).
_OWN_MARKER = {"item_item": "ii_rank", "two_tower": "tt_rank", "popular": "pop_rank",
               "bought_together": "bt_confidence"}  # fmt: skip


@dataclass(frozen=True)
class ItemFilters:
    """Business filters of a request; pushed into the vector search and applied to the rest."""

    category: str | None = None
    department: str | None = None
    max_price: float | None = None
    in_stock: bool | None = None

    def is_empty(self) -> bool:
        return (self.category, self.department, self.max_price, self.in_stock) == (None,) * 4


NO_FILTERS = ItemFilters()


@dataclass
class ItemCatalog:
    """Per item index arrays (row 0 = unknown item) the pipeline reads at request time.

    ``counts``/``recent_counts``: purchases in the data the sources were fitted on (all time
    and the recent window), computed from the same interactions as the sources so that ranker
    training rows and serving rows see demand the same way.
    """

    item_ids: list[str]
    category: np.ndarray
    colour: np.ndarray
    department: np.ndarray
    category_names: list[str]
    colour_names: list[str]
    department_names: list[str]
    price: np.ndarray
    in_stock: np.ndarray
    counts: np.ndarray
    recent_counts: np.ndarray
    titles: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _masks: dict[ItemFilters, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {item: i + 1 for i, item in enumerate(self.item_ids)}

    @classmethod
    def from_frame(cls, item_ids: Sequence[str], frame: pd.DataFrame) -> ItemCatalog:
        """``frame``: item_id plus any of category, colour, department, price, in_stock,
        title, count, recent_count (missing columns get neutral values)."""
        rows = frame.drop_duplicates("item_id", keep="last").set_index("item_id")
        rows = rows.reindex(list(item_ids))
        n = len(item_ids) + 1

        def codes(column: str) -> tuple[np.ndarray, list[str]]:
            values = rows[column] if column in rows else pd.Series(UNKNOWN, index=rows.index)
            values = values.fillna(UNKNOWN).astype(str)
            names = [UNKNOWN, *sorted(set(values) - {UNKNOWN})]
            lookup = {name: i for i, name in enumerate(names)}
            out = np.zeros(n, dtype=np.int32)
            out[1:] = [lookup[v] for v in values]
            return out, names

        def numeric(column: str, default: float) -> np.ndarray:
            out = np.full(n, default, dtype=np.float32)
            if column in rows:
                out[1:] = pd.to_numeric(rows[column], errors="coerce").fillna(default).to_numpy()
            return out

        category, category_names = codes("category")
        colour, colour_names = codes("colour")
        department, department_names = codes("department")
        price = numeric("price", np.nan)
        in_stock = np.ones(n, dtype=bool)
        if "in_stock" in rows:
            in_stock[1:] = rows["in_stock"].fillna(True).astype(bool).to_numpy()
        titles = ["", *(rows["title"].fillna(pd.Series(rows.index, index=rows.index)).astype(str)
                        if "title" in rows else list(item_ids))]  # fmt: skip
        return cls(
            list(item_ids), category, colour, department, category_names, colour_names,
            department_names, price, in_stock,
            numeric("count", 0.0), numeric("recent_count", 0.0), titles,
        )  # fmt: skip

    @property
    def n_items(self) -> int:
        return len(self.item_ids) + 1

    def index(self, item_id: str) -> int:
        return self._index.get(item_id, 0)

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(i, 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def item_id(self, index: int) -> str:
        return self.item_ids[index - 1]

    def allowed(self, filters: ItemFilters) -> np.ndarray | None:
        """Boolean mask of items passing the filters (None: no filter); cached per filter."""
        if filters.is_empty():
            return None
        mask = self._masks.get(filters)
        if mask is None:
            mask = np.ones(self.n_items, dtype=bool)
            mask[0] = False
            if filters.category is not None:
                mask &= self.category == _code(self.category_names, filters.category)
            if filters.department is not None:
                mask &= self.department == _code(self.department_names, filters.department)
            if filters.max_price is not None:
                mask &= self.price <= filters.max_price  # unknown price (NaN) fails the filter
            if filters.in_stock is not None:
                mask &= self.in_stock == filters.in_stock
            if len(self._masks) > 256:
                self._masks.clear()
            self._masks[filters] = mask
        return mask


def _code(names: list[str], value: str) -> int:
    try:
        return names.index(value)
    except ValueError:
        return -1  # matches nothing


@dataclass
class UserContext:
    """What is known about the visitor when recommending.

    ``history``: purchased item ids, newest first (already-bought exclusion and the sources'
    seeds). ``session``: items browsed in this visit, newest first (seeds, excluded too).
    ``features``: the Feast user row (may be empty for a new visitor). ``vector``: the
    two-tower user vector when one was computed.
    """

    user_id: str | None
    history: Sequence[str] = ()
    session: Sequence[str] = ()
    features: Mapping[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None

    @property
    def age_bucket(self) -> str | None:
        bucket = self.features.get("age_bucket")
        return None if bucket in (None, UNKNOWN) else str(bucket)

    def seeds(self, limit: int) -> list[str]:
        """Items the behavioural sources start from: this visit first, then purchases."""
        return list(dict.fromkeys([*self.session, *self.history]))[:limit]


#: ``search(vector, k, filters, exclude_indices) -> (indices, scores)``
VectorSearch = Callable[[np.ndarray, int, ItemFilters, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class SourceLimits:
    item_item: int = 100
    two_tower: int = 100
    bought_together: int = 30
    popular: int = 50
    seeds: int = 50  # history items the behavioural sources start from
    rule_seeds: int = 5  # most recent items whose rules are used
    popular_window: str = "7d"


@dataclass
class CandidateSet:
    """Candidates of one user: indices, ranker features, and evidence for the reasons."""

    items: np.ndarray
    features: np.ndarray
    sources: dict[str, np.ndarray]  # source -> bool mask over items
    ii_seed: np.ndarray  # strongest history item behind the item-item score (0: none)
    bt_seed: np.ndarray  # antecedent of the best rule (0: none)
    failed: list[str] = field(default_factory=list)  # sources that raised (degraded answer)
    timings_ms: dict[str, float] = field(default_factory=dict)  # per source, then features

    def __len__(self) -> int:
        return len(self.items)


class CandidateGenerator:
    """Runs every configured source for one user and builds the ranker's feature rows."""

    def __init__(
        self,
        catalog: ItemCatalog,
        neighbors: ItemNeighbors | None = None,
        rules: BoughtTogether | None = None,
        popularity: PopularityTable | None = None,
        vector_search: VectorSearch | None = None,
        limits: SourceLimits | None = None,
        item_vectors: np.ndarray | None = None,
    ) -> None:
        """``item_vectors``: the two-tower item vectors by vocabulary index (row 0 = unknown),
        so that every candidate, not only the vector search's own, gets its two-tower score."""
        self.catalog = catalog
        self.neighbors = neighbors
        self.rules = rules
        self.popularity = popularity
        self.vector_search = vector_search
        self.limits = limits or SourceLimits()
        self.item_vectors = item_vectors

    def generate(self, ctx: UserContext, filters: ItemFilters = NO_FILTERS) -> CandidateSet:
        cat, lim = self.catalog, self.limits
        allowed = cat.allowed(filters)
        excluded = cat.indices([*ctx.history, *ctx.session])
        seeds = cat.indices(ctx.seeds(lim.seeds))
        seeds = seeds[seeds > 0]
        blocked = np.zeros(cat.n_items, dtype=bool)
        blocked[0] = True
        blocked[excluded] = True
        if allowed is not None:
            blocked |= ~allowed

        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        ms: dict[str, float] = {}
        clock = time.perf_counter()
        ii_seed_of: dict[int, int] = {}
        # every item reachable from the seeds with its summed, hit-count and best single
        # weight: the item-item evidence of *any* candidate, whichever source proposed it
        reach: tuple[np.ndarray, ...] | None = None
        if self.neighbors is not None and len(seeds):
            cols, weights, rows = self.neighbors.gather(seeds)
            keep = ~blocked[cols]
            cols, weights, rows = cols[keep], weights[keep], rows[keep]
            if len(cols):
                items, inverse = np.unique(cols, return_inverse=True)
                sums = np.bincount(inverse, weights=weights)
                hits = np.bincount(inverse).astype(np.float64)
                # the history item with the largest single weight explains the candidate
                order = np.lexsort((-weights, inverse))
                first = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
                best_row = rows[order][first]
                best_weight = weights[order][first]
                reach = (items, sums, hits, best_weight)
                top = _top(sums, lim.item_item)
                found["item_item"] = (items[top], sums[top])
                ii_seed_of = dict(zip(items[top].tolist(), best_row[top].tolist(), strict=True))
        clock = _lap(ms, "item_item", clock)
        failed: list[str] = []
        if self.vector_search is not None and ctx.vector is not None:
            try:
                idx, scores = self.vector_search(ctx.vector, lim.two_tower, filters, excluded)
            except Exception:  # a failing vector store must not fail the request
                log.exception("two-tower candidates failed: answering from the other sources")
                failed.append("two_tower")
            else:
                keep = ~blocked[idx]
                found["two_tower"] = (idx[keep], scores[keep])
        clock = _lap(ms, "search", clock)
        bt_seed_of: dict[int, int] = {}
        bt_lift: dict[int, float] = {}
        if self.rules is not None and len(seeds):
            recent = [cat.item_id(int(s)) for s in seeds[: lim.rule_seeds]]
            rules = self.rules.for_items_with_lift(recent, lim.bought_together * 3)
            idx = cat.indices([r[0] for r in rules])
            conf = np.array([r[1] for r in rules], dtype=np.float64)
            keep = ~blocked[idx]
            take = np.flatnonzero(keep)[: lim.bought_together]
            found["bought_together"] = (idx[take], conf[take])
            for j in take.tolist():
                bt_seed_of[int(idx[j])] = int(cat.index(rules[j][2]))
                bt_lift[int(idx[j])] = rules[j][3]
        clock = _lap(ms, "bought_together", clock)
        if self.popularity is not None:
            window = lim.popular_window
            if window not in self.popularity.windows:  # nothing sold in it: all-time counts
                window = self.popularity.windows[-1]
            top_items = self.popularity.top(
                # room for what the visitor has (the category filter is applied by the
                # table itself; other filters may leave fewer than ``lim.popular``)
                lim.popular + min(len(excluded), 500),
                window=window, category=filters.category,
                age_bucket=ctx.age_bucket,
            )  # fmt: skip
            idx = cat.indices([t[0] for t in top_items])
            keep = np.flatnonzero(~blocked[idx])[: lim.popular]
            found["popular"] = (idx[keep], np.arange(1, len(keep) + 1, dtype=np.float64))

        clock = _lap(ms, "popular", clock)
        pools = [found[s][0] for s in SOURCES if s in found]
        if not pools:
            return _empty_set(failed)
        items = np.unique(np.concatenate(pools))
        features = np.full((len(items), len(FEATURES)), np.nan, dtype=np.float32)
        col = {name: i for i, name in enumerate(FEATURES)}
        sources: dict[str, np.ndarray] = {}

        def put(source_items: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
            pos = np.searchsorted(items, source_items)
            features[pos, col[name]] = values
            return pos

        for source, score_name, rank_name in (
            ("item_item", "ii_score", "ii_rank"),
            ("two_tower", "tt_score", "tt_rank"),
            ("bought_together", "bt_confidence", None),
            ("popular", None, "pop_rank"),
        ):
            mask = np.zeros(len(items), dtype=bool)
            if source in found:
                ids, values = found[source]
                if score_name and len(ids):
                    put(ids, values, score_name)
                if rank_name:
                    features[:, col[rank_name]] = MISSING_RANK
                    if len(ids):
                        put(ids, np.arange(1, len(ids) + 1), rank_name)
                mask[np.searchsorted(items, ids)] = True
            elif rank_name:
                features[:, col[rank_name]] = MISSING_RANK
            sources[source] = mask
        if reach is not None:
            reached, sums, hits, best_weight = reach
            pos = np.minimum(np.searchsorted(reached, items), len(reached) - 1)
            hit = reached[pos] == items
            for name, values in (("ii_score", sums), ("ii_hits", hits), ("ii_max", best_weight)):
                features[:, col[name]] = np.where(hit, values[pos], 0.0)
        elif self.neighbors is not None and len(seeds):  # a history, but no link from it
            for name in ("ii_score", "ii_hits", "ii_max"):
                features[:, col[name]] = 0.0
        if self.item_vectors is not None and ctx.vector is not None:
            # the same cosine the vector search ranks by, for every candidate
            features[:, col["tt_score"]] = self.item_vectors[items] @ ctx.vector
        if bt_lift:
            put(np.array(list(bt_lift), dtype=np.int64), np.array(list(bt_lift.values())),
                "bt_lift")  # fmt: skip
        features[:, col["n_sources"]] = np.sum([m for m in sources.values()], axis=0)
        self._item_and_user_features(features, col, items, seeds, ctx)
        ii_seed = np.array([ii_seed_of.get(int(i), 0) for i in items], dtype=np.int64)
        bt_seed = np.array([bt_seed_of.get(int(i), 0) for i in items], dtype=np.int64)
        _lap(ms, "candidate_features", clock)
        return CandidateSet(items, features, sources, ii_seed, bt_seed, failed, ms)

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
        features[:, col["user_age"]] = _number(f.get("age"))
        features[:, col["user_days_since_purchase"]] = _number(f.get("days_since_last_purchase"))
        features[:, col["user_log_purchases_30d"]] = math.log1p(
            max(_number(f.get("purchases_30d"), 0.0), 0.0)
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


def source_order(features: np.ndarray, source: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Row positions of ``source``'s own candidates, in the order that source ranks them: the
    source alone, to compare the ranker with each of its inputs. ``rows``: the source's
    candidates when known (``CandidateSet.sources``), else read from the rank columns."""
    if rows is None:
        marker = features[:, FEATURES.index(_OWN_MARKER[source])]
        rows = np.flatnonzero(np.isfinite(marker) & (marker < MISSING_RANK))
    column, descending = SOURCE_ORDER[source]
    values = features[rows, FEATURES.index(column)].astype(np.float64)
    return rows[np.argsort(-values if descending else values, kind="stable")]


def _lap(timings: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    timings[stage] = (now - since) * 1e3
    return now


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (stable for ties)."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")


def _number(value: Any, default: float = np.nan) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _empty_set(failed: list[str]) -> CandidateSet:
    empty = np.empty(0, dtype=np.int64)
    return CandidateSet(
        empty, np.empty((0, len(FEATURES)), dtype=np.float32),
        {s: np.empty(0, dtype=bool) for s in SOURCES}, empty, empty, failed,
    )  # fmt: skip
