"""SLIST: one item-item matrix for what goes together in a session and what comes next.

Choi et al., "Session-aware Linear Item-Item Models for Session-based Recommendation"
(WWW 2021). Two ridge regressions of items on items, solved together in closed form:

* SLIS (consistency): a whole session (binary, rows L1-normalised) reproduces itself, EASE-like
  but with the diagonal *relaxed* to ``diag(B) <= max_diagonal`` instead of 0, so an item may
  recommend itself (repeats are common in shopping);
* SLIT (transitions): for every cut ``t`` of a session, the items up to ``t`` (weighted
  ``exp(-(t - s) / train_weight)``, recent ones more) predict the items after it (weighted
  ``exp(-(s - t - 1) / train_weight)``, the next ones more).

Every row of both is weighted ``exp(-age / session_weight)`` (age in days between the session's
start and the latest training session's), so the matrix follows the season. With
``A = [sqrt(alpha) X; sqrt(1 - alpha) S]`` the stacked inputs, ``T`` the stacked targets and
``W`` the row weights::

    P  = (A' W A + reg I)^-1
    B0 = P A' W T
    B  = B0 - P diag(mu),  mu_j = max(0, (B0_jj - max_diagonal) / P_jj)

the exact minimiser of ``||W^1/2 (T - A B)||^2 + reg ||B||^2`` subject to the diagonal bound
(the bound involves one column each, and ``mu`` is its Lagrange multiplier). A prefix scores
``sum_s exp(-(L - 1 - s) / predict_weight) B[item_s]``. A weight <= 0 means "unweighted" (1), as
in the paper's code.

The inverse is dense, ``8 n^2`` bytes for ``n`` items (a few copies at once while fitting), so
SLIST learns over the ``max_items`` items that occur most in the training sessions (all of them
in a catalogue that small): 10,000 items take 0.8 GB per copy and 0.4 GB served. The other
items get no SLIST score; the session pipeline's other sources (item-item, session kNN, rules)
still cover them, and its ranker sees SLIST's score as missing for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
from scipy import sparse

from models.session.base import SessionModel, register_model, resolve_params
from models.session.data import PAD, Sessions
from models.session.rules import check_choice, known_items
from recsys.core.run import Run

DAY_NS = 86_400 * 10**9
DIRECTIONS = ("part", "all", "sr")
NORMALISATIONS = ("l1", "l2", "none")


@register_model
class SLIST(SessionModel):
    """SLIST; see the module docstring. ``weights`` is the fitted ``B`` (float32)."""

    name = "slist"
    defaults: ClassVar[dict[str, Any]] = {
        "alpha": 0.5,
        "reg": 10.0,
        "session_weight": 32.0,
        "train_weight": 1.0,
        "predict_weight": 4.0,
        "direction": "part",
        "normalize": "l1",
        "max_diagonal": 10.0,
        "max_items": 10_000,
    }
    grid: ClassVar[dict[str, Sequence[Any]]] = {
        "alpha": (0.2, 0.5, 0.8),
        "reg": (10.0, 100.0, 1000.0),
        "session_weight": (8.0, 32.0, 256.0),
        "train_weight": (0.5, 1.0, 4.0),
        "predict_weight": (1.0, 4.0, 16.0),
    }

    def __init__(
        self,
        n_items: int,
        params: dict[str, Any],
        weights: np.ndarray,
        items: np.ndarray | None = None,
    ) -> None:
        """``weights``: B over the ``items`` it learned (row/column ``j + 1`` is ``items[j]``,
        0 the padding); ``items`` None: every index ``1..n_items - 1`` (a full vocabulary)."""
        super().__init__(n_items, params)
        self.weights = weights
        self.items = np.arange(1, n_items, dtype=np.int64) if items is None else items
        self._position = np.zeros(n_items, dtype=np.int64)  # vocabulary index -> row of B
        self._position[self.items] = np.arange(1, len(self.items) + 1)

    @classmethod
    def fit(cls, sessions: Sessions, n_items: int, **params: Any) -> Self:
        params = resolve_params(cls, params)
        _check(params)
        sessions = known_items(sessions, n_items)
        items = _most_frequent(sessions, n_items, int(params["max_items"]))
        position = np.zeros(n_items, dtype=np.int64)
        position[items] = np.arange(1, len(items) + 1)
        coded = position[sessions.items]
        sessions = Sessions(coded, sessions.offsets, sessions.start).keep_items(coded != PAD)
        weights = _solve(sessions, len(items) + 1, params)
        return cls(n_items, params, weights, items)

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        batch = Sessions.from_prefixes(prefixes, self.n_items)
        coded = self._position[batch.items]  # items SLIST did not learn score nothing
        batch = Sessions(coded, batch.offsets, batch.start).keep_items(coded != PAD)
        distance = np.repeat(batch.lengths(), batch.lengths()) - 1 - batch.positions()
        weight = _decay(distance, float(self.params["predict_weight"]))
        # the weighted sum of the prefix items' rows of B, per prefix: a gather and a segment
        # sum (scipy's sparse @ dense costs ~1.4 ms even for one 4-item prefix)
        learned = np.zeros((len(batch), len(self.weights)), dtype=np.float32)
        rows = self.weights[batch.items] * weight[:, None].astype(np.float32)
        filled = np.flatnonzero(batch.lengths() > 0)
        if len(filled):
            learned[filled] = np.add.reduceat(rows, batch.offsets[filled], axis=0)
        if len(self.items) == self.n_items - 1:
            return learned  # the full vocabulary: B's columns are the item indices
        out = np.zeros((len(batch), self.n_items), dtype=np.float32)
        out[:, self.items] = learned[:, 1:]
        return out

    def save(self, run: Run, part: str) -> None:
        run.write_tensors(part, {"weights": self.weights, "items": self.items})
        self.save_params(run, part)

    @classmethod
    def load(cls, run: Run, part: str) -> Self:
        n, params = cls.read_params(run, part)
        tensors = run.read_tensors(part)
        return cls(n, params, tensors["weights"], tensors.get("items"))


def _solve(sessions: Sessions, n_items: int, params: dict[str, Any]) -> np.ndarray:
    """B (float32, ``n_items`` square) of the module docstring for sessions coded in
    ``0..n_items - 1``."""
    alpha = float(params["alpha"])
    row_weight = _session_weights(sessions, float(params["session_weight"]))
    slis_in, slis_out = _slis(sessions, n_items)
    slit_in, slit_out, slit_session = _slit(
        sessions, n_items, float(params["train_weight"]), params["direction"]
    )
    inputs = sparse.vstack([np.sqrt(alpha) * _normalise(slis_in, params["normalize"]),
                            np.sqrt(1 - alpha) * _normalise(slit_in, params["normalize"])],
                           format="csr")  # fmt: skip
    targets = sparse.vstack(
        [np.sqrt(alpha) * slis_out, np.sqrt(1 - alpha) * slit_out], format="csr"
    )
    w = np.concatenate([row_weight, row_weight[slit_session]])
    weighted = sparse.csr_array(inputs.multiply(w[:, None]))
    gram = (inputs.T @ weighted).toarray()
    gram[np.diag_indices(n_items)] += float(params["reg"])
    inverse = np.linalg.inv(gram)
    weights = inverse @ (weighted.T @ targets).toarray()
    excess = np.diag(weights) - float(params["max_diagonal"])
    mu = np.maximum(0.0, excess) / np.diag(inverse)
    weights -= inverse * mu[None, :]
    return weights.astype(np.float32)


def _most_frequent(sessions: Sessions, n_items: int, limit: int) -> np.ndarray:
    """The vocabulary indices SLIST learns: every one when there are at most ``limit``, else
    the ``limit`` most frequent in ``sessions`` (ties: lower index), in index order."""
    if n_items - 1 <= limit:
        return np.arange(1, n_items, dtype=np.int64)
    counts = np.bincount(sessions.items, minlength=n_items)[1:]
    top = np.argsort(-counts, kind="stable")[:limit]
    return np.sort(top[counts[top] > 0] + 1).astype(np.int64)


def _check(params: dict[str, Any]) -> None:
    if int(params["max_items"]) < 1:
        raise ValueError(f"SLIST max_items={params['max_items']} must be >= 1")
    if not 0 <= float(params["alpha"]) <= 1:
        raise ValueError(f"SLIST alpha={params['alpha']} must be in [0, 1] (1 = SLIS only)")
    if float(params["reg"]) <= 0:
        raise ValueError(f"SLIST reg={params['reg']} must be > 0 (the ridge keeps B finite)")
    check_choice("SLIST", "direction", params["direction"], DIRECTIONS)
    check_choice("SLIST", "normalize", params["normalize"], NORMALISATIONS)


def _decay(distance: np.ndarray, scale: float) -> np.ndarray:
    """``exp(-distance / scale)``, or 1 when ``scale <= 0`` (the paper's "no weighting")."""
    if scale <= 0:
        return np.ones(len(distance))
    return np.exp(-np.asarray(distance, dtype=np.float64) / scale)


def _session_weights(sessions: Sessions, days: float) -> np.ndarray:
    """``exp(-age / days)`` per session, the age from the latest session's start."""
    if not len(sessions) or days <= 0:
        return np.ones(len(sessions))
    start = sessions.start.astype("datetime64[ns]").astype(np.int64)
    return np.exp(-(start.max() - start) / (days * DAY_NS))


def _slis(sessions: Sessions, n_items: int) -> tuple[sparse.csr_array, sparse.csr_array]:
    """(input, target) of SLIS: the binary session x item matrix, twice."""
    matrix = sparse.csr_array(
        (np.ones(len(sessions.items)), (sessions.session_index(), sessions.items)),
        shape=(len(sessions), n_items),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix, matrix.copy()


def _slit(
    sessions: Sessions, n_items: int, train_weight: float, direction: str
) -> tuple[sparse.csr_array, sparse.csr_array, np.ndarray]:
    """(input, target, session of each row) of SLIT: one row per cut ``t`` of a session of
    length ``L >= 2`` (``t = 0..L-2``), built as every (cut, position) pair of the session,
    then split by which side of the cut the position lies (repeated items add up)."""
    lengths = sessions.lengths()
    cuts = np.maximum(lengths - 1, 0)
    cut_session = np.repeat(np.arange(len(sessions)), cuts)
    cut_t = np.arange(cuts.sum()) - np.repeat(np.cumsum(cuts) - cuts, cuts)
    per_cut = lengths[cut_session]
    cell_cut = np.repeat(np.arange(len(cut_t)), per_cut)
    cell_s = np.arange(per_cut.sum()) - np.repeat(np.cumsum(per_cut) - per_cut, per_cut)
    t = cut_t[cell_cut]
    item = sessions.items[sessions.offsets[cut_session[cell_cut]] + cell_s]
    before = cell_s <= t
    if direction == "part":
        is_in, is_out = before, ~before
    elif direction == "all":
        is_in = is_out = np.ones(len(t), dtype=bool)
    else:  # "sr": the item at the cut alone predicts what follows
        is_in, is_out = cell_s == t, ~before
    in_w = _decay(np.abs(t - cell_s)[is_in], train_weight)
    out_w = _decay(np.abs(cell_s - t - 1)[is_out], train_weight)
    shape = (len(cut_t), n_items)
    inputs = sparse.csr_array((in_w, (cell_cut[is_in], item[is_in])), shape=shape)
    targets = sparse.csr_array((out_w, (cell_cut[is_out], item[is_out])), shape=shape)
    inputs.sum_duplicates()
    targets.sum_duplicates()
    return inputs, targets, cut_session


def _normalise(matrix: sparse.csr_array, norm: str) -> sparse.csr_array:
    """Rows scaled to unit L1 / L2 norm (the paper's inputs), empty rows left at 0."""
    if norm == "none":
        return matrix
    if norm == "l1":
        size = np.asarray(abs(matrix).sum(axis=1)).ravel()
    else:
        size = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scale = np.divide(1.0, size, out=np.zeros_like(size), where=size > 0)
    return sparse.csr_array(matrix.multiply(scale[:, None]))
