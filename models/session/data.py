"""Ordered shopping sessions: the data every session model and item2vec learn from.

Sessions are stored in CSR form (one array of item indices, one of offsets), coded in a
vocabulary: the run's item vocabulary when a served source fits on them, a frequency-ordered
:class:`SessionVocabulary` for item2vec. Index 0 is padding and where unknown items map.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys.core.schema import EVENT_TYPES, REQUIRED_COLUMNS
from recsys.core.vocab import Vocabulary

if TYPE_CHECKING:
    import duckdb

PAD = 0  # index 0 of every table: padding, and where unknown items map


# --------------------------------------------------------------------------- vocabulary
class SessionVocabulary(Vocabulary):
    """The items of the training sessions, most frequent first (ties by id), so that the
    order is deterministic and a truncated table keeps the items that matter; ``counts[i]``
    is how often index ``i`` occurred (``counts[0]``, the padding, is 0)."""

    def __init__(self, item_ids: np.ndarray | list[str], counts: np.ndarray) -> None:
        super().__init__(str(i) for i in item_ids)
        if len(counts) != len(self.ids) + 1:
            raise ValueError(
                f"vocabulary has {len(self.ids)} ids but {len(counts)} counts; "
                "counts must have one more entry (index 0 = padding)."
            )
        self.counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def fit(cls, tokens: np.ndarray, min_count: int = 1) -> SessionVocabulary:
        """Vocabulary of the item ids in ``tokens`` seen at least ``min_count`` times."""
        ids, counts = np.unique(np.asarray(tokens, dtype=object), return_counts=True)
        keep = counts >= min_count
        ids, counts = ids[keep], counts[keep]
        order = np.lexsort((ids, -counts))
        return cls(ids[order], np.concatenate([[0], counts[order]]).astype(np.int64))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"index": np.arange(1, self.size, dtype=np.int64),
                             "item_id": self.ids, "count": self.counts[1:]})  # fmt: skip

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> SessionVocabulary:
        frame = frame.sort_values("index")
        if not np.array_equal(frame["index"].to_numpy(), np.arange(1, len(frame) + 1)):
            raise ValueError("vocabulary file is corrupt: indices must be 1..V without gaps")
        counts = np.concatenate([[0], frame["count"].to_numpy(np.int64)])
        return cls(frame["item_id"].to_numpy(object), counts)


# --------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class Sessions:
    """Sessions in CSR form, session s = ``items[offsets[s]:offsets[s + 1]]``: a million
    sessions in two arrays, and every step downstream (pairs, transitions) is a vectorised
    comparison of neighbouring positions."""

    items: np.ndarray  # int64 vocabulary indices (0 = unknown where kept)
    offsets: np.ndarray  # int64, length n_sessions + 1
    start: np.ndarray  # datetime64[ns] (UTC) of each session's first event

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def session_index(self) -> np.ndarray:
        """Session number of every position in ``items``."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))

    def lengths(self) -> np.ndarray:
        """Number of positions of every session."""
        return np.diff(self.offsets)

    def positions(self) -> np.ndarray:
        """Position of every entry of ``items`` within its session (0 = first): the distance
        weights of the session models are functions of it."""
        return np.arange(len(self.items), dtype=np.int64) - np.repeat(
            self.offsets[:-1], self.lengths()
        )

    def select(self, sessions: np.ndarray) -> Sessions:
        """The sessions at ``sessions`` (positions or a boolean mask), in that order: the
        validation slice, the held-out sessions long enough to predict from."""
        index = np.arange(len(self), dtype=np.int64)[np.asarray(sessions)]
        lengths = self.lengths()[index]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        take = np.repeat(self.offsets[index] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Sessions(self.items[take], offsets, self.start[index])

    def keep_items(self, keep: np.ndarray) -> Sessions:
        """Only the positions where ``keep`` (one flag per entry of ``items``) holds; every
        session stays, possibly empty, and repeats that become adjacent are not merged (the
        evaluation protocol removes unknown targets this way, as session-rec does)."""
        keep = np.asarray(keep, dtype=bool)
        kept = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
        return Sessions(self.items[keep], kept[self.offsets], self.start)

    @classmethod
    def from_prefixes(cls, prefixes: Sequence[np.ndarray], n_items: int) -> Sessions:
        """A batch of session prefixes as sessions, 0s (unknown items) left out, so a model
        scores a batch with the same vectorised code it fits with.

        An index outside ``0..n_items-1`` means the prefixes and the model use different
        vocabularies; scoring it would silently read another item's row, so it is an error."""
        lengths = np.fromiter((len(p) for p in prefixes), dtype=np.int64, count=len(prefixes))
        items = (
            np.concatenate([np.asarray(p, dtype=np.int64).ravel() for p in prefixes])
            if len(prefixes)
            else np.empty(0, dtype=np.int64)
        )
        bad = (items < 0) | (items >= n_items)
        if bad.any():
            raise ValueError(
                f"prefix item index {int(items[bad][0])} is outside 0..{n_items - 1}: the "
                "prefixes are coded in another vocabulary than the model was fitted on; encode "
                "them with the vocabulary of the model's run."
            )
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        start = np.zeros(len(prefixes), dtype="datetime64[ns]")
        return cls(items, offsets, start).keep_items(items != PAD)


_DAY_NS = 86_400_000_000_000


def build_sessions(
    interactions: pd.DataFrame | Path,
    vocab: SessionVocabulary | Vocabulary | None = None,
    *,
    min_count: int = 1,
    drop_unknown: bool = True,
    before: pd.Timestamp | None = None,
    starting_from: pd.Timestamp | None = None,
    memory_limit: str = "2GB",
) -> tuple[Sessions, SessionVocabulary | Vocabulary]:
    """Ordered sessions of views, carts and purchases, and the vocabulary they are coded in:
    events grouped by session (``session_id``, or user + UTC calendar day where it is null or
    empty, the usual stand-in for logs without sessions), sessions ordered by their first event
    and events by timestamp (ties keep input order), a run of one item collapsed to one step
    (view -> cart -> purchase of an item is one step of the journey, not three).

    ``interactions``: a frame, or a Parquet file of the canonical table (``validated/
    interactions.parquet``). Either way the grouping, ordering and collapsing run in DuckDB,
    which spills beyond ``memory_limit``, and only three numbers per step come back, so a log
    of tens of millions of events never becomes a pandas frame. ``before``: only events before
    it (the training side of a time split); ``starting_from``: only sessions whose first event
    is at or after it (the held-out side: a session that straddles the cut is training's).

    Without ``vocab`` one is fitted on these sessions (``min_count``). Items outside the
    vocabulary become 0; ``drop_unknown`` removes them (training: they carry no signal, and the
    neighbours on either side become adjacent), otherwise they stay in place (evaluation: a
    step to an unseen item is a step no model could predict, and must count as a miss).
    """
    import duckdb

    from recsys.core.sql import connect_duckdb

    with tempfile.TemporaryDirectory(prefix="recsys-sessions-") as spill:
        con = connect_duckdb(memory_limit, Path(spill))
        try:
            _events_view(con, interactions)
            con.execute(_STEPS_SQL.format(where=_window(con, before, starting_from)))
            if vocab is None:
                vocab = _fit_vocabulary(con, min_count)
            codes = pd.DataFrame({"item_id": vocab.ids, "code": np.arange(1, vocab.size)})
            con.register("vocab", codes)
            return _fetch_sessions(con, drop_unknown), vocab
        except duckdb.Error as exc:
            where = interactions if isinstance(interactions, Path) else "the interactions"
            raise ValueError(f"sessions could not be built from {where}: {exc}") from exc
        finally:
            con.close()


def _events_view(con: duckdb.DuckDBPyConnection, interactions: pd.DataFrame | Path) -> None:
    """View ``events`` (item_id, session key, timestamp in ns, input row number) of the
    session event types; the errors a user can act on name the column or file at fault."""
    from recsys.core.sql import parquet, sql_str

    if isinstance(interactions, Path):
        if not interactions.exists():
            raise FileNotFoundError(f"{interactions} is missing: run `recsys validate` first.")
        source = f"{parquet(interactions)[:-1]}, file_row_number = true)"
        columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        ts, row = 'epoch_ns("timestamp")', "file_row_number"
    else:
        frame = interactions.assign(_row=np.arange(len(interactions), dtype=np.int64))
        columns = set(frame.columns)
        if "timestamp" in columns:
            frame["timestamp"] = _utc_ns(frame["timestamp"]).astype(np.int64)
        con.register("frame", frame)
        source, ts, row = "frame", '"timestamp"', "_row"
    where = interactions if isinstance(interactions, Path) else "interactions"
    missing = set(REQUIRED_COLUMNS["interactions"]) - columns
    if missing:
        raise ValueError(
            f"{where} lack(s) column(s) {sorted(missing)}: sessions need user_id, item_id, "
            "timestamp and event_type (see recsys/core/schema.py)."
        )
    sid = "NULLIF(CAST(session_id AS VARCHAR), '')" if "session_id" in columns else "NULL"
    con.execute(
        f"""CREATE TEMP VIEW events AS
            SELECT CAST(item_id AS VARCHAR) AS item_id, {ts} AS ts, {row} AS rn,
                   coalesce('s' || {sid}, 'u' || CAST(user_id AS VARCHAR) || chr(31)
                            || CAST({ts} // {_DAY_NS} AS VARCHAR)) AS skey
            FROM {source} WHERE event_type IN ({", ".join(map(sql_str, EVENT_TYPES))})"""
    )
    nulls = con.execute("SELECT count(*) FROM events WHERE ts IS NULL").fetchone()[0]
    if nulls:
        raise ValueError(
            f"{where} has {nulls} null timestamps: sessions cannot be ordered; validate the "
            "data first (`recsys validate`)."
        )


def _utc_ns(timestamps: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(timestamps, utc=True)
    return ts.dt.tz_convert(None).to_numpy().astype("datetime64[ns]")


def _window(
    con: duckdb.DuckDBPyConnection, before: pd.Timestamp | None, starting_from: pd.Timestamp | None
) -> str:
    """The WHERE clause of the time split (bound as parameters would stop DuckDB pushing it)."""
    clauses = ["TRUE"]
    if before is not None:
        clauses.append(f"ts < {_ns(before)}")
    if starting_from is not None:
        clauses.append(f"start >= {_ns(starting_from)}")
    return " AND ".join(clauses)


def _ns(when: pd.Timestamp) -> int:
    when = pd.Timestamp(when)
    return (when.tz_localize("UTC") if when.tzinfo is None else when).value


#: Each session's start, then the first event of each run of one item within a session.
_STEPS_SQL = """
CREATE TEMP TABLE steps AS
WITH timed AS (SELECT *, min(ts) OVER (PARTITION BY skey) AS start FROM events),
     kept AS (SELECT * FROM timed WHERE {where}),
     marked AS (SELECT *, lag(item_id) OVER (PARTITION BY skey ORDER BY ts, rn) AS prev
                FROM kept)
SELECT item_id, skey, start, ts, rn FROM marked WHERE prev IS NULL OR prev <> item_id
"""


def _fit_vocabulary(con: duckdb.DuckDBPyConnection, min_count: int) -> SessionVocabulary:
    counts = con.execute(
        "SELECT item_id, count(*) AS n FROM steps GROUP BY item_id HAVING count(*) >= ?",
        [min_count],
    ).df()
    ids, n = counts["item_id"].to_numpy(object), counts["n"].to_numpy(np.int64)
    order = np.lexsort((ids, -n))
    return SessionVocabulary(ids[order], np.concatenate([[0], n[order]]).astype(np.int64))


def _fetch_sessions(con: duckdb.DuckDBPyConnection, drop_unknown: bool) -> Sessions:
    """The coded steps in session order, as CSR arrays; with ``drop_unknown`` the unknown
    items are removed and the runs that makes adjacent collapsed again."""
    coded = "SELECT s.*, coalesce(v.code, 0) AS code FROM steps s LEFT JOIN vocab v USING (item_id)"
    if drop_unknown:
        coded = f"""SELECT * FROM (
            SELECT *, lag(code) OVER (PARTITION BY skey ORDER BY ts, rn) AS prev_code
            FROM ({coded}) WHERE code <> 0) WHERE prev_code IS NULL OR prev_code <> code"""
    result = con.execute(
        f"""SELECT code, start,
                   row_number() OVER (PARTITION BY skey ORDER BY ts, rn) = 1 AS first
            FROM ({coded}) ORDER BY start, skey, ts, rn"""
    ).fetchnumpy()
    codes = np.asarray(result["code"], dtype=np.int64)
    first = np.asarray(result["first"], dtype=bool)
    bounds = np.flatnonzero(first)
    starts = np.asarray(result["start"], dtype=np.int64)[bounds]
    offsets = np.append(bounds, len(codes)).astype(np.int64)
    return Sessions(codes, offsets, starts.astype("datetime64[ns]"))
