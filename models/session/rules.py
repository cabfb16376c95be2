"""Rule models: what followed (or surrounded) the item on screen in past sessions.

:class:`SequentialRules` is session-rec's SR (Ludewig & Jannach 2018): an item followed ``d``
positions later counts ``w(d)`` for the rule ``a -> b``, and a visitor is shown the strongest
rules of the item they are on. It is the strongest simple baseline of that study because fashion
browsing is mostly "from this product to one of its neighbours". :class:`Cooccurrence` drops the
direction (items near each other in a session, either way round), which is what a "related items"
strip without order would learn; the gap between the two measures how much order matters.

Both keep one ``n_items x n_items`` sparse matrix whose row ``a`` is the score vector after ``a``;
scoring a prefix reads the row of its last (known) item.
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
from models.session.data import PAD, Sessions
from recsys.core.run import Run

#: Decay of a rule with the distance ``d >= 1`` between the two positions, as session-rec's SR
#: (and V-SkNN's score decay) define them. session-rec's "linear" goes negative beyond d = 10;
#: a far-apart pair is weak evidence, not evidence against, so it stops at 0 here.
DECAYS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "div": lambda d: 1.0 / d,
    "linear": lambda d: np.maximum(0.0, 1.0 - 0.1 * d),
    "quadratic": lambda d: 1.0 / (d * d),
    "log": lambda d: 1.0 / np.log10(d + 1.7),
    "same": lambda d: np.ones_like(d, dtype=np.float64),
}


def decay(weighting: str, distance: np.ndarray | float) -> np.ndarray:
    """``DECAYS[weighting]`` of ``distance`` (float64)."""
    return DECAYS[weighting](np.asarray(distance, dtype=np.float64))


def check_choice(model: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    """A readable error for a categorical hyper-parameter outside its choices."""
    if value not in choices:
        raise ValueError(
            f"{model} {name}={value!r} is not one of {', '.join(map(repr, choices))}; "
            f"pick one of those for {name}."
        )


def check_int(model: str, name: str, value: Any, minimum: int) -> int:
    """A readable error for an integer hyper-parameter below ``minimum``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{model} {name}={value!r} must be an integer >= {minimum}.")
    return int(value)


def known_items(sessions: Sessions, n_items: int) -> Sessions:
    """``sessions`` without 0s (unknown items carry no signal, and their neighbours become
    adjacent), after checking that every index fits the ``n_items`` the model is sized for."""
    if len(sessions.items) and (sessions.items.min() < 0 or sessions.items.max() >= n_items):
        raise ValueError(
            f"session item indices span {int(sessions.items.min())}..{int(sessions.items.max())}"
            f" but n_items={n_items}: n_items must exceed the largest index (vocabulary size "
            "including the padding index 0)."
        )
    return sessions.keep_items(sessions.items != PAD)


def pairs_within(sessions: Sessions, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier item, later item) of every pair of positions ``distance`` apart in one session:
    one vectorised comparison of the item array with itself shifted."""
    items, sid = sessions.items, sessions.session_index()
    same = sid[distance:] == sid[:-distance]
    return items[:-distance][same], items[distance:][same]


def top_per_row(matrix: sparse.csr_array, keep: int) -> sparse.csr_array:
    """The ``keep`` largest entries of every row (ties: the smaller item index), so pruning is
    deterministic whatever order the rules were counted in."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rank = np.arange(len(order)) - matrix.indptr[rows[order]]
    kept = order[rank < keep]
    return sparse.csr_array(
        (matrix.data[kept], (rows[kept], matrix.indices[kept])), shape=matrix.shape
    )


class RowRules(SessionModel):
    """A model whose scores after item ``a`` are row ``a`` of one sparse matrix."""

    def __init__(self, n_items: int, params: dict[str, Any], rules: sparse.csr_array) -> None:
        super().__init__(n_items, params)
        self.rules = rules

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        batch = Sessions.from_prefixes(prefixes, self.n_items)
        out = np.zeros((len(prefixes), self.n_items), dtype=np.float32)
        filled = batch.lengths() > 0
        last = batch.items[batch.offsets[1:][filled] - 1]
        if len(last):
            out[filled] = self.rules[last].toarray()
        return out

    def save(self, run: Run, part: str) -> None:
        run.write_tensors(part, csr_parts(self.rules.tocsr()))
        self.save_params(run, part)

    @classmethod
    def load(cls, run: Run, part: str) -> Self:
        n, params = cls.read_params(run, part)
        return cls(n, params, csr_from_parts(run.read_tensors(part), n))

    def describe(self) -> str:
        return f"{super().describe()}, {self.rules.nnz} rules"


@register_model
class SequentialRules(RowRules):
    """session-rec's SR: ``a -> b`` gains ``w(j - i)`` for every ``a`` at position ``i`` and
    ``b`` at ``j``, ``0 < j - i <= steps``; ``pruning`` > 0 keeps that many strongest rules per
    ``a`` (session-rec's defaults: steps 10, div, 20)."""

    name = "sr"
    defaults: ClassVar[dict[str, Any]] = {"steps": 10, "weighting": "div", "pruning": 20}
    grid: ClassVar[dict[str, Sequence[Any]]] = {
        "steps": (3, 5, 10, 15),
        "weighting": ("div", "linear", "quadratic"),
        "pruning": (0, 20),
    }

    @classmethod
    def fit(cls, sessions: Sessions, n_items: int, **params: Any) -> Self:
        params = resolve_params(cls, params)
        steps = check_int(cls.__name__, "steps", params["steps"], 1)
        pruning = check_int(cls.__name__, "pruning", params["pruning"], 0)
        check_choice(cls.__name__, "weighting", params["weighting"], tuple(DECAYS))
        sessions = known_items(sessions, n_items)
        heads, tails, weights = [], [], []
        for d in range(1, steps + 1):
            w = float(decay(params["weighting"], d))
            if w <= 0:
                continue
            a, b = pairs_within(sessions, d)
            heads.append(a)
            tails.append(b)
            weights.append(np.full(len(a), w))
        rules = _matrix(heads, tails, weights, n_items)
        if pruning:
            rules = top_per_row(rules, pruning)
        return cls(n_items, params, rules)


@register_model
class Cooccurrence(RowRules):
    """Symmetric counts of two items at most ``window`` positions apart in one session (each
    ordered pair of positions counts once, so an item repeated nearby counts for itself too)."""

    name = "cooccurrence"
    defaults: ClassVar[dict[str, Any]] = {"window": 2}
    grid: ClassVar[dict[str, Sequence[Any]]] = {"window": (1, 2, 3, 5)}

    @classmethod
    def fit(cls, sessions: Sessions, n_items: int, **params: Any) -> Self:
        params = resolve_params(cls, params)
        window = check_int(cls.__name__, "window", params["window"], 1)
        sessions = known_items(sessions, n_items)
        heads, tails, weights = [], [], []
        for d in range(1, window + 1):
            a, b = pairs_within(sessions, d)
            heads += [a, b]
            tails += [b, a]
            weights += [np.ones(len(a)), np.ones(len(a))]
        return cls(n_items, params, _matrix(heads, tails, weights, n_items))


def _matrix(
    rows: list[np.ndarray], cols: list[np.ndarray], values: list[np.ndarray], n_items: int
) -> sparse.csr_array:
    """Summed (row, col, value) triples as an ``n_items x n_items`` CSR matrix."""
    if not rows:
        return sparse.csr_array((n_items, n_items), dtype=np.float32)
    matrix = sparse.coo_array(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
    ).tocsr()
    matrix.sum_duplicates()
    return sparse.csr_array(matrix, dtype=np.float32)
