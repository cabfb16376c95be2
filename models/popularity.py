"""Popularity: the fallback for unknown visitors and the baseline every model must beat.

Every popularity in the platform is computed here: item counts over a window
(:func:`top_items`, also the ranker's demand features), the segment lists of the popular
candidate source (:func:`segment_popularity`, :class:`PopularityTable`), the baselines of
``recsys evaluate`` (:class:`Popularity`, :class:`RecentPopularity`) and the order item2vec's
evaluation falls back to (:func:`popularity_order`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from numbers import Integral

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from models.baselines import BaselineModel, binarize


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


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Item indices with a count (``counts[i]``: index ``i``, 0 the padding), most frequent
    first (ties by index)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[(order != 0) & (counts[order] > 0)]


# --------------------------------------------------------------------------- baselines
class Popularity(BaselineModel):
    """All-time interaction counts: the same list for everyone, minus what they have."""

    name = "popularity"

    def fit(self, matrix: sp.csr_matrix) -> Popularity:
        self.train_matrix = matrix.tocsr()
        return self.fit_counts(np.asarray(binarize(matrix).sum(axis=0)).ravel())

    def fit_counts(self, counts: np.ndarray) -> Popularity:
        # Scores are ranks, not counts: ties broken by item column, identically every batch.
        order = np.argsort(-counts, kind="stable")
        self._item_scores = np.empty(len(counts), dtype=np.float32)
        self._item_scores[order] = -np.arange(len(counts), dtype=np.float32)
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._item_scores, (len(user_rows), len(self._item_scores)))


class RecentPopularity(Popularity):
    """Counts over the last ``days`` before the newest event; all-time when time does not vary.

    Fashion demand moves with the season, so recent counts are the stronger baseline when the
    data has real timestamps (H&M); ASOS's train pairs share one timestamp, where this equals
    :class:`Popularity`.
    """

    name = "popularity_recent"

    def __init__(self, days: int = 14) -> None:
        super().__init__()
        self.days = days

    def params(self) -> dict[str, float | int]:
        return {"days": self.days}

    def fit(
        self,
        matrix: sp.csr_matrix,
        item_cols: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
    ) -> RecentPopularity:
        """``item_cols``/``timestamps``: one entry per training event (optional)."""
        self.train_matrix = matrix.tocsr()
        counts = np.asarray(binarize(matrix).sum(axis=0)).ravel()
        if item_cols is not None and timestamps is not None and len(timestamps):
            ts = pd.to_datetime(pd.Series(timestamps))
            if ts.min() != ts.max():
                recent = (ts >= ts.max() - pd.Timedelta(days=self.days)).to_numpy()
                recent_counts = np.bincount(
                    np.asarray(item_cols)[recent], minlength=matrix.shape[1]
                ).astype(np.float64)
                # all-time counts only break ties among items unseen in the window
                counts = recent_counts + counts / (counts.max() + 1.0)
        return self.fit_counts(counts)


# --------------------------------------------------------------------------- segments
WINDOW_ALL = "all"
UNKNOWN = "unknown"  # the segment of a null category / age bucket, or an unknown item / user
SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("window", pa.string()),
        pa.field("segment_type", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("purchases", pa.int64()),
        pa.field("score", pa.float64()),
        pa.field("rank", pa.int64()),
    ]
)
SEGMENT_COLUMNS: tuple[str, ...] = tuple(SEGMENT_SCHEMA.names)


def window_label(days: int | None) -> str:
    """``7`` -> ``"7d"``, ``None`` -> ``"all"``: the ``window`` values of the segment table."""
    return WINDOW_ALL if days is None else f"{days}d"


def _window_days(label: str) -> float:
    """Sort key of a window label: its length in days, "all" last."""
    return float("inf") if label == WINDOW_ALL else float(label.removesuffix("d"))


def _sql_ts(ts: pd.Timestamp) -> str:
    return f"TIMESTAMPTZ '{ts.isoformat()}'"


def segment_popularity(
    purchases: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    *,
    end: pd.Timestamp,
    windows: Sequence[int | None] = (7, 30, None),
    top_n: int = 200,
) -> pd.DataFrame:
    """Most bought items per time window and segment: the fallback lists for thin profiles.

    One global list serves an unknown visitor, but a visitor browsing shoes, or one whose age
    is known, is better served by what sells in that category or to that age group; short
    windows follow trends, "all" is stable. Every list is computed up front so serving is a
    lookup (:class:`PopularityTable`).

    ``purchases``: ``user_id``, ``item_id``, ``timestamp``. ``items``: ``item_id``, ``category``
    (null -> ``"unknown"``; items missing from ``items`` too). ``users``: ``user_id``,
    ``age_bucket``, or None for no age segments. A window of ``d`` days counts purchases in
    ``[end - d, end)``; ``None`` counts everything before ``end`` (never later: ``end`` is
    typically a train/test split, and "all time" must not leak the test period).

    Returns :data:`SEGMENT_COLUMNS`: ``window`` (``"7d"``, ``"all"``), ``segment_type``
    (``"all"``, ``"category"``, ``"age_bucket"``), ``segment`` (``""`` for ``"all"``),
    ``item_id``, ``purchases``, ``score`` (share of the list's window+segment purchases, all
    items counted, not only the top ``top_n``), ``rank`` (1 = most bought; ties by all-time
    purchases before ``end``, then item id, so reruns give identical lists). Aggregation runs
    in DuckDB: the purchases are reduced to (item, age bucket, window bucket) counts in one
    pass, and every window and segment is a sum over that small table.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    for w in windows:
        if w is not None and (isinstance(w, bool) or not isinstance(w, Integral) or w < 1):
            raise ValueError(f"a window is a positive number of days or None, got {w!r}")
    labels = [window_label(None if w is None else int(w)) for w in windows]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"windows must be non-empty and distinct, got {list(windows)}")
    for name, frame, needed in (
        ("purchases", purchases, ("user_id", "item_id", "timestamp")),
        ("items", items, ("item_id", "category")),
        ("users", users, ("user_id", "age_bucket")),
    ):
        lacking = [] if frame is None else [c for c in needed if c not in frame.columns]
        if lacking:
            raise ValueError(f"{name} lacks column(s): {', '.join(lacking)}")
    end = pd.Timestamp(end)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    if purchases.empty:
        return SEGMENT_SCHEMA.empty_table().to_pandas()

    # Window buckets: a purchase's bucket is the position (shortest first) of the shortest
    # window holding it; window at position j then counts buckets 0..j.
    by_length = sorted(range(len(windows)), key=lambda j: _window_days(labels[j]))
    holds = [
        "TRUE" if windows[j] is None else f"ts >= {_sql_ts(end - pd.Timedelta(days=windows[j]))}"
        for j in by_length
    ]
    cases = " ".join(f"WHEN {cond} THEN {pos}" for pos, cond in enumerate(holds))
    bucket = f"CASE {cases} ELSE {len(windows)} END"  # older than every window: tie-breaks only
    wins = ", ".join(f"('{labels[j]}', {j}, {pos})" for pos, j in enumerate(by_length))
    age_sql = f"coalesce(u.age_bucket, '{UNKNOWN}')" if users is not None else "NULL::VARCHAR"
    users_join = (
        """LEFT JOIN (SELECT CAST(user_id AS VARCHAR) AS user_id,
                             min(CAST(age_bucket AS VARCHAR)) AS age_bucket
                      FROM users GROUP BY 1) u ON u.user_id = p.user_id"""
        if users is not None
        else ""
    )
    age_segments = (
        """UNION ALL
           SELECT "window", ord, 2, 'age_bucket', age_bucket, item_id, sum(n) FROM counts
           GROUP BY ALL"""
        if users is not None
        else ""
    )
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("purchases", purchases)
        con.register("items", items)
        if users is not None:
            con.register("users", users)
        con.execute(
            f"""CREATE TEMP TABLE base AS
                SELECT p.item_id, {age_sql} AS age_bucket, {bucket} AS wb, count(*) AS n
                FROM (SELECT CAST(user_id AS VARCHAR) AS user_id,
                             CAST(item_id AS VARCHAR) AS item_id, "timestamp" AS ts
                      FROM purchases
                      WHERE "timestamp" < {_sql_ts(end)} AND item_id IS NOT NULL) p
                {users_join}
                GROUP BY ALL"""
        )
        out = con.execute(
            f"""WITH wins(label, ord, pos) AS (VALUES {wins}),
                counts AS (
                    SELECT w.label AS "window", w.ord, b.item_id, b.age_bucket, sum(b.n) AS n
                    FROM base b JOIN wins w ON b.wb <= w.pos GROUP BY ALL),
                cats AS (
                    SELECT CAST(item_id AS VARCHAR) AS item_id,
                           min(CAST(category AS VARCHAR)) AS category
                    FROM items GROUP BY 1),
                seg AS (
                    SELECT "window", ord, 0 AS st, 'all' AS segment_type, '' AS segment,
                           item_id, sum(n) AS n
                    FROM counts GROUP BY ALL
                    UNION ALL
                    SELECT c."window", c.ord, 1, 'category', coalesce(i.category, '{UNKNOWN}'),
                           c.item_id, sum(c.n)
                    FROM counts c LEFT JOIN cats i ON i.item_id = c.item_id GROUP BY ALL
                    {age_segments}),
                alltime AS (SELECT item_id, sum(n) AS total FROM base GROUP BY item_id),
                ranked AS (
                    SELECT s.*,
                           s.n / sum(s.n) OVER (
                               PARTITION BY s."window", s.segment_type, s.segment) AS score,
                           row_number() OVER (
                               PARTITION BY s."window", s.segment_type, s.segment
                               ORDER BY s.n DESC, a.total DESC, s.item_id ASC) AS rank
                    FROM seg s JOIN alltime a ON a.item_id = s.item_id)
                SELECT "window", segment_type, segment, item_id,
                       CAST(n AS BIGINT) AS purchases, CAST(score AS DOUBLE) AS score,
                       CAST(rank AS BIGINT) AS rank
                FROM ranked WHERE rank <= {int(top_n)}
                ORDER BY ord, st, segment, rank"""
        ).df()
    return out if not out.empty else SEGMENT_SCHEMA.empty_table().to_pandas()


class PopularityTable:
    """Segment popularity lists ready for serving: a request is a dict hit and a slice.

    Built once from :func:`segment_popularity` output. Each (window, segment type, segment)
    list is a Python list of ``(item_id, score)`` tuples in rank order, so the common request
    (no exclusions, enough items) returns a slice of it without touching pandas or numpy.
    """

    __slots__ = ("_lists", "_windows", "_categories")

    def __init__(self, lists: dict[tuple[str, str, str], list[tuple[str, float]]]) -> None:
        self._lists = lists
        self._windows = tuple(sorted({w for w, _, _ in lists}, key=_window_days))
        self._categories = tuple(sorted({s for _, t, s in lists if t == "category"}))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> PopularityTable:
        """Build from :func:`segment_popularity` output (any row order; rank decides)."""
        missing = set(SEGMENT_COLUMNS) - set(frame.columns) - {"purchases"}
        if missing:
            raise ValueError(f"popularity frame lacks column(s): {', '.join(sorted(missing))}")
        df = frame.sort_values(["window", "segment_type", "segment", "rank"], kind="stable")
        lists: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
        for key, group in df.groupby(["window", "segment_type", "segment"], sort=False):
            lists[(str(key[0]), str(key[1]), str(key[2]))] = list(
                zip(
                    group["item_id"].astype(str).tolist(),
                    group["score"].astype(float).tolist(),
                    strict=True,
                )
            )
        return cls(lists)

    @property
    def windows(self) -> tuple[str, ...]:
        """Window labels, shortest first (``"all"`` last)."""
        return self._windows

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories with a list of their own (any window), sorted."""
        return self._categories

    def top(
        self,
        k: int = 10,
        window: str = "7d",
        category: str | None = None,
        age_bucket: str | None = None,
        exclude: Collection[str] = (),
    ) -> list[tuple[str, float]]:
        """The ``k`` most popular ``(item_id, score)`` for a segment, minus ``exclude``.

        The segment is ``category`` if given, else ``age_bucket`` if given, else everyone.
        A segment with fewer than ``k`` items left (thin, unknown, or eaten by ``exclude``) is
        topped up from the window's overall list, then from the all-time overall list, without
        duplicates; so a caller always gets ``k`` items when the shop has them. Each score is
        the item's share within the list it came from.
        """
        if window not in self._windows:
            raise ValueError(f"unknown window {window!r}; allowed: {', '.join(self._windows)}")
        if k <= 0:
            return []
        if category is not None:
            key = (window, "category", category)
        elif age_bucket is not None:
            key = (window, "age_bucket", age_bucket)
        else:
            key = (window, "all", "")
        primary = self._lists.get(key, [])
        if not exclude and len(primary) >= k:
            return primary[:k]
        chain = [primary]
        if key[1] != "all":
            chain.append(self._lists.get((window, "all", ""), []))
        if window != WINDOW_ALL:
            chain.append(self._lists.get((WINDOW_ALL, "all", ""), []))
        excluded = exclude if isinstance(exclude, set | frozenset | dict) else set(exclude)
        taken: set[str] = set()
        out: list[tuple[str, float]] = []
        for ranked in chain:
            for entry in ranked:
                item = entry[0]
                if item in taken or item in excluded:
                    continue
                taken.add(item)
                out.append(entry)
                if len(out) == k:
                    return out
        return out
