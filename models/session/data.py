"""Ordered shopping sessions: the data every session model and item2vec learn from.

Sessions are stored in CSR form (one array of item indices, one of offsets), coded in a
vocabulary: the run's item vocabulary when a served source fits on them, a frequency-ordered
:class:`SessionVocabulary` for item2vec. Index 0 is padding and where unknown items map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.core.schema import EVENT_TYPES, REQUIRED_COLUMNS
from recsys.core.vocab import Vocabulary

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


def session_keys(interactions: pd.DataFrame) -> np.ndarray:
    """An integer session key per row: ``session_id``, or user + UTC calendar day without one
    (null or empty: adapters for logs without sessions leave it so; a shopper's day is the usual
    stand-in)."""
    ts = _utc_ns(interactions["timestamp"])
    sid = interactions.get("session_id", pd.Series(None, interactions.index, dtype=object))
    has = (sid.notna() & (sid.astype(object) != "")).to_numpy()
    key = np.empty(len(interactions), dtype=np.int64)
    codes, uniques = pd.factorize(sid[has])
    key[has] = codes
    day = ts[~has].astype("datetime64[D]")
    fallback = pd.DataFrame({"u": interactions["user_id"].to_numpy()[~has], "d": day})
    key[~has] = len(uniques) + fallback.groupby(["u", "d"], sort=False).ngroup().to_numpy()
    return key


def _utc_ns(timestamps: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(timestamps, utc=True)
    if ts.isna().any():
        raise ValueError(
            f"interactions have {int(ts.isna().sum())} null timestamps: sessions cannot be "
            "ordered; validate the data first (`recsys validate`)."
        )
    return ts.dt.tz_convert(None).to_numpy().astype("datetime64[ns]")


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Mask of the positions where any of ``columns`` differs from the position before (and of
    the first): the first of each run of one item within one session, or of each session."""
    starts = np.ones(len(columns[0]), dtype=bool)
    starts[1:] = np.logical_or.reduce([col[1:] != col[:-1] for col in columns])
    return starts


def build_sessions(
    interactions: pd.DataFrame,
    vocab: SessionVocabulary | None = None,
    *,
    min_count: int = 1,
    drop_unknown: bool = True,
) -> tuple[Sessions, SessionVocabulary]:
    """Ordered sessions of views, carts and purchases, and the vocabulary they are coded in:
    events grouped by session (see :func:`session_keys`), sessions ordered by their first event
    and events by timestamp (ties keep input order), a run of one item collapsed to one step
    (view -> cart -> purchase of an item is one step of the journey, not three).

    Without ``vocab`` one is fitted on these sessions (``min_count``). Items outside the
    vocabulary become 0; ``drop_unknown`` removes them (training: they carry no signal, and the
    neighbours on either side become adjacent), otherwise they stay in place (evaluation: a
    step to an unseen item is a step no model could predict, and must count as a miss).
    """
    missing = set(REQUIRED_COLUMNS["interactions"]) - set(interactions.columns)
    if missing:
        raise ValueError(
            f"interactions lack column(s) {sorted(missing)}: sessions need user_id, item_id, "
            "timestamp and event_type (see recsys/core/schema.py)."
        )
    events = interactions[interactions["event_type"].isin(EVENT_TYPES)]
    key = session_keys(events)
    ts = _utc_ns(events["timestamp"]).astype(np.int64)
    item_codes, item_uniques = pd.factorize(events["item_id"])
    start_of_key = pd.Series(ts).groupby(key).transform("min").to_numpy()
    order = np.lexsort((np.arange(len(events)), ts, key, start_of_key))
    key, item_codes, start_of_key = key[order], item_codes[order], start_of_key[order]
    keep = _run_starts(item_codes, key)
    key, start_of_key = key[keep], start_of_key[keep]
    tokens = np.asarray(item_uniques, dtype=object)[item_codes[keep]]
    if vocab is None:
        vocab = SessionVocabulary.fit(tokens, min_count)
    codes = vocab.encode(tokens)
    if drop_unknown:
        known = codes != PAD
        codes, key, start_of_key = codes[known], key[known], start_of_key[known]
        keep = _run_starts(codes, key)
        codes, key, start_of_key = codes[keep], key[keep], start_of_key[keep]
    bounds = np.flatnonzero(_run_starts(key))
    offsets = np.append(bounds, len(key)).astype(np.int64)
    sessions = Sessions(codes, offsets, start_of_key[bounds].astype("datetime64[ns]"))
    return sessions, vocab
