"""V-SkNN: the items of past sessions that resemble this one, recent clicks counting most.

session-rec's vector-multiplication session kNN (Ludewig & Jannach, "Evaluation of
session-based recommendation algorithms", 2018), which matched or beat the neural models of
that study. For a prefix of length ``L``:

* candidates are the training sessions sharing an item with it, cut to the ``sample_size``
  most recent (recency keeps the neighbours in season, and bounds the work);
* a candidate's similarity is the sum of the position weights ``w(i, L)`` of the prefix items
  it contains (``i`` = 1-based position of an item's last occurrence, so the item on screen
  weighs most), times the item's IDF with ``idf``, divided by the number of distinct prefix
  items (session-rec) or, with ``normalize``, by the geometric mean of both sessions' distinct
  item counts (cosine-like: a long neighbour no longer matches everything);
* the ``k`` most similar candidates (ties: the more recent) vote for each of their items with
  their similarity times ``score_weighting(step)``, ``step`` being how far from the end of the
  prefix the most recent item they share lies (1 = they contain the item on screen).

The training sessions are one binary session x item CSR matrix in start order, so "most recent"
is "largest row index"; a batch of prefixes is scored with a few sparse products and gathers.
Only each item's ``sample_size`` most recent sessions can be among a prefix's ``sample_size``
most recent candidates (a session further back in every one of its items' lists has that many
more recent candidates ahead of it), so candidates are drawn from those lists alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import numpy as np
from scipy import sparse

from models.session.base import (
    SessionModel,
    csr_from_parts,
    csr_parts,
    register_model,
    resolve_params,
)
from models.session.data import Sessions
from models.session.rules import DECAYS, check_choice, check_int, decay, known_items
from recsys.core.run import Run

#: Weight of the prefix item whose last occurrence is at 1-based position ``i`` of ``L``, as
#: session-rec's V-SkNN defines them. Its "linear" is 0 for every ``i > 10`` (a test on the
#: position from the start, so long sessions lose their latest items); it is taken here as the
#: evident intent, 1 - 0.1 * (distance from the end), floored at 0.
POSITION_WEIGHTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "div": lambda i, n: i / n,
    "linear": lambda i, n: np.maximum(0.0, 1.0 - 0.1 * (n - i)),
    "quadratic": lambda i, n: (i / n) ** 2,
    "log": lambda i, n: 1.0 / np.log10(n - i + 1.7),
    "same": lambda i, n: np.ones_like(i, dtype=np.float64),
}
#: Similarities are compared at this many decimals, so that two candidates whose sums differ by
#: float rounding alone tie, and the tie goes to the more recent one.
_SIM_DECIMALS = 10
#: Prefix rows x items held dense per batch (the weight lookups): at most 16 MiB of float64.
_DENSE_CELLS = 1 << 21
#: Candidate (session, item) entries gathered per batch.
_GATHER_CELLS = 1 << 21


@register_model
class VSkNN(SessionModel):
    """V-SkNN; see the module docstring. ``sessions`` is the binary session x item matrix in
    start order, ``idf`` the log inverse session frequency of every item (0 if never seen)."""

    name = "vsknn"
    defaults: ClassVar[dict[str, Any]] = {
        "k": 100,
        "sample_size": 1000,
        "weighting": "div",
        "score_weighting": "div",
        "idf": False,
        "normalize": False,
    }
    grid: ClassVar[dict[str, Sequence[Any]]] = {
        "k": (50, 100, 200, 500),
        "sample_size": (500, 1000, 5000),
        "weighting": ("div", "linear", "quadratic"),
        "idf": (False, True),
    }

    def __init__(
        self, n_items: int, params: dict[str, Any], sessions: sparse.csr_array, idf: np.ndarray
    ) -> None:
        super().__init__(n_items, params)
        self.sessions = sessions
        self.idf = idf
        self.session_lengths = np.diff(sessions.indptr)
        self._recent = _most_recent_per_item(sessions, int(params["sample_size"]))

    @classmethod
    def fit(cls, sessions: Sessions, n_items: int, **params: Any) -> Self:
        params = resolve_params(cls, params)
        check_int(cls.__name__, "k", params["k"], 1)
        check_int(cls.__name__, "sample_size", params["sample_size"], 1)
        check_choice(cls.__name__, "weighting", params["weighting"], tuple(POSITION_WEIGHTS))
        check_choice(cls.__name__, "score_weighting", params["score_weighting"], tuple(DECAYS))
        check_choice(cls.__name__, "idf", params["idf"], (False, True))
        check_choice(cls.__name__, "normalize", params["normalize"], (False, True))
        sessions = known_items(sessions, n_items)
        order = np.argsort(sessions.start, kind="stable")
        if np.any(order != np.arange(len(order))):
            sessions = sessions.select(order)
        matrix = sparse.csr_array(
            (np.ones(len(sessions.items)), (sessions.session_index(), sessions.items)),
            shape=(len(sessions), n_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        frequency = np.bincount(matrix.indices, minlength=n_items)
        idf = np.zeros(n_items)
        seen = frequency > 0
        idf[seen] = np.log(len(sessions) / frequency[seen])
        return cls(n_items, params, matrix, idf)

    # ------------------------------------------------------------------ scoring
    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        batch = Sessions.from_prefixes(prefixes, self.n_items)
        out = np.zeros((len(prefixes), self.n_items), dtype=np.float32)
        size = self._batch_size()
        for lo in range(0, len(batch), size):
            hi = min(lo + size, len(batch))
            out[lo:hi] = self._score_batch(batch.select(np.arange(lo, hi)))
        return out

    def _batch_size(self) -> int:
        """Prefixes per batch: enough to amortise the Python steps, few enough that the dense
        weight rows and the candidates' items (about sample_size x mean session length per
        prefix) stay in cache-sized arrays; larger batches are slower, not faster."""
        n_sessions = max(self.sessions.shape[0], 1)
        mean_length = max(self.sessions.nnz / n_sessions, 1.0)
        per_prefix = min(int(self.params["sample_size"]), n_sessions) * mean_length
        size = min(_GATHER_CELLS / per_prefix, _DENSE_CELLS / max(self.n_items, 1))
        return int(np.clip(size, 16, 1024))

    def _score_batch(self, batch: Sessions) -> np.ndarray:
        n_rows, n = len(batch), self.n_items
        # the distinct items of each prefix, at their last occurrence
        row, pos, items = batch.session_index(), batch.positions(), batch.items
        last = np.lexsort((pos, items, row))
        keep = np.ones(len(last), dtype=bool)
        keep[:-1] = (row[last][1:] != row[last][:-1]) | (items[last][1:] != items[last][:-1])
        last = last[keep]
        row, pos, items = row[last], pos[last], items[last]
        length = batch.lengths()[row].astype(np.float64)
        weight = POSITION_WEIGHTS[self.params["weighting"]](pos + 1.0, length)
        if self.params["idf"]:
            weight = weight * self.idf[items]
        weights = np.zeros((n_rows, n))
        weights[row, items] = weight
        distinct = np.bincount(row, minlength=n_rows)

        # candidates: the sample_size most recent sessions sharing an item with the prefix
        present = sparse.csr_array((np.ones(len(row)), (row, items)), shape=(n_rows, n))
        candidates = (present @ self._recent).tocsr()
        candidates.sort_indices()
        cand_row = np.repeat(np.arange(n_rows), np.diff(candidates.indptr))
        from_end = candidates.indptr[cand_row + 1] - 1 - np.arange(candidates.nnz)
        sample = from_end < self.params["sample_size"]
        cand_row, cand = cand_row[sample], candidates.indices[sample].astype(np.int64)
        if not len(cand):
            return np.zeros((n_rows, n), dtype=np.float32)

        sim = self._gather(weights, cand_row, cand, np.add)
        if self.params["normalize"]:
            sim = sim / np.sqrt(distinct[cand_row] * self.session_lengths[cand])
        else:
            sim = sim / distinct[cand_row]

        # the k most similar (ties: the most recent) with a positive similarity
        positive = np.flatnonzero(sim > 0)[::-1]  # reversed: the most recent first per row
        cand_row, cand, sim = cand_row[positive], cand[positive], sim[positive]
        order = np.lexsort((-np.round(sim, _SIM_DECIMALS), cand_row))  # stable: recency on ties
        starts = np.searchsorted(cand_row[order], np.arange(n_rows))
        rank = np.arange(len(order)) - starts[cand_row[order]]
        best = order[rank < self.params["k"]]
        cand_row, cand, sim = cand_row[best], cand[best], sim[best]

        # each neighbour's vote decays with how far back the latest item it shares is
        latest = np.zeros((n_rows, n))
        latest[row, items] = pos + 1  # 1-based position of each item's last occurrence
        step = batch.lengths()[cand_row] - self._gather(latest, cand_row, cand, np.maximum) + 1
        vote = sim * decay(self.params["score_weighting"], step)
        neighbours = sparse.csr_array(
            (vote, (cand_row, cand)), shape=(n_rows, self.sessions.shape[0])
        )
        return (neighbours @ self.sessions).toarray().astype(np.float32)

    def _gather(
        self, table: np.ndarray, rows: np.ndarray, sessions: np.ndarray, reduce: np.ufunc
    ) -> np.ndarray:
        """``reduce`` of ``table[rows[j], item]`` over the items of training session
        ``sessions[j]``, for every j (each session has an item, being a candidate)."""
        picked = self.sessions[sessions]
        flat = np.repeat(rows * table.shape[1], np.diff(picked.indptr)) + picked.indices
        return reduce.reduceat(table.ravel()[flat], picked.indptr[:-1])

    # ------------------------------------------------------------------ persistence
    def save(self, run: Run, part: str) -> None:
        run.write_tensors(part, csr_parts(self.sessions, with_data=False)
                          | {"idf": self.idf.astype(np.float64)})  # fmt: skip
        self.save_params(run, part)

    @classmethod
    def load(cls, run: Run, part: str) -> Self:
        n, params = cls.read_params(run, part)
        parts = run.read_tensors(part)
        matrix = csr_from_parts(parts, n)
        return cls(n, params, matrix, parts["idf"])

    def describe(self) -> str:
        return f"{super().describe()}, {self.sessions.shape[0]} sessions"


def _most_recent_per_item(sessions: sparse.csr_array, sample_size: int) -> sparse.csr_array:
    """The item x session matrix keeping each item's ``sample_size`` most recent sessions: the
    only sessions that can be among a prefix's ``sample_size`` most recent candidates."""
    by_item = sessions.T.tocsr()
    by_item.sort_indices()
    item_row = np.repeat(np.arange(by_item.shape[0]), np.diff(by_item.indptr))
    from_end = by_item.indptr[item_row + 1] - 1 - np.arange(by_item.nnz)
    keep = from_end < sample_size
    return sparse.csr_array(
        (by_item.data[keep], (item_row[keep], by_item.indices[keep])), shape=by_item.shape
    )
