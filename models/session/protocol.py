"""The session-rec evaluation protocol, one implementation for the peers and the served pipeline.

Ludewig & Jannach's protocol (session-rec's ``evaluate_sessions``): held-out sessions are
revealed one item at a time, every prefix predicts the item that follows it, and HR@K / MRR@K
are averaged over those events. Items the training data never saw are removed from the held-out
sessions first (no model could name them, so they would only add the same constant miss to every
model), and sessions left with fewer than two items give no event. Repeats stay: coming back to
an item is a legitimate next click.

Tuning follows the same protocol on a temporal validation slice (the latest training sessions),
so hyper-parameters are chosen the way the test split scores them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from models.metrics import next_item_metrics
from models.session.base import resolve_params
from models.session.data import PAD, Sessions
from recsys.core.arrays import top_k
from recsys.core.terminal import track

if TYPE_CHECKING:
    from models.session.base import SessionModel

log = logging.getLogger(__name__)

Scorer = Callable[[Sequence[np.ndarray]], np.ndarray]


# --------------------------------------------------------------------------- parameters
def grid_points(
    model_cls: type[SessionModel], max_trials: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Every combination of ``model_cls.grid`` (over its defaults), or a seeded sample of
    ``max_trials`` of them: the same budget for every model, whatever the size of its grid."""
    names = list(model_cls.grid)
    combos = list(itertools.product(*(model_cls.grid[n] for n in names)))
    if max_trials is not None and len(combos) > max_trials:
        if max_trials < 1:
            raise ValueError(f"max_trials={max_trials} must be >= 1 (or None for the whole grid)")
        pick = np.sort(np.random.default_rng(seed).choice(len(combos), max_trials, replace=False))
        combos = [combos[i] for i in pick]
    return [resolve_params(model_cls, dict(zip(names, c, strict=True))) for c in combos]


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class NextItemCases:
    """The events of held-out sessions: prefix ``sessions.items[start:end]`` predicts
    ``sessions.items[end]``. Kept flat (the sessions plus two offsets per event) so a million
    events cost two int64 arrays, and a batch of prefixes is a list of views."""

    sessions: Sessions  # unknown items removed, sessions with >= 2 items
    starts: np.ndarray  # int64 per event: where its session starts in sessions.items
    ends: np.ndarray  # int64 per event: where its prefix ends (= the target's position)

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def events(self) -> int:
        """Number of events (what ``evaluate`` averages over)."""
        return len(self.ends)

    @property
    def targets(self) -> np.ndarray:
        return self.sessions.items[self.ends]

    def prefixes(self, lo: int = 0, hi: int | None = None) -> list[np.ndarray]:
        """The prefixes of events ``lo..hi``, oldest item first (views, not copies)."""
        items = self.sessions.items
        return [items[s:e] for s, e in zip(self.starts[lo:hi], self.ends[lo:hi], strict=True)]


def next_item_cases(heldout: Sessions, known: np.ndarray | None = None) -> NextItemCases:
    """Every (prefix, next item) event of ``heldout``, after removing the items unknown to
    training (index 0, or, with ``known``, any index not in it) and the sessions left with
    fewer than two items."""
    keep = heldout.items != PAD
    if known is not None:
        keep &= np.isin(heldout.items, np.asarray(known))
    sessions = heldout.keep_items(keep)
    sessions = sessions.select(sessions.lengths() >= 2)
    lengths = sessions.lengths()
    n_events = lengths - 1
    starts = np.repeat(sessions.offsets[:-1], n_events)
    first = np.concatenate([[0], np.cumsum(n_events)])[:-1]
    ends = starts + 1 + np.arange(int(n_events.sum())) - np.repeat(first, n_events)
    return NextItemCases(sessions, starts.astype(np.int64), ends.astype(np.int64))


# --------------------------------------------------------------------------- metrics
def evaluate(
    score: Scorer, cases: NextItemCases, k: int = 20, batch: int = 1024
) -> dict[str, float]:
    """HR@k and MRR@k averaged over events, scoring ``batch`` prefixes per call (the models
    vectorise over a batch; the score matrix of one batch is ``batch x n_items`` floats).

    Column 0 (padding / unknown) is never ranked, so a model that scores nothing for a prefix
    does not spend a slot on it; ties are broken by :func:`recsys.core.arrays.top_k`."""
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    hr = mrr = 0.0
    targets = cases.targets
    for lo in range(0, len(cases), batch):
        hi = min(lo + batch, len(cases))
        scores = np.array(score(cases.prefixes(lo, hi)), dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != hi - lo:
            raise ValueError(
                f"the scorer returned shape {scores.shape} for {hi - lo} prefixes; it must "
                "return one row of item scores per prefix."
            )
        scores[:, PAD] = -np.inf
        top = top_k(scores, k)  # fewer than k columns when the catalogue is smaller
        metrics = next_item_metrics(top, targets[lo:hi])
        hr += metrics[f"hr@{top.shape[1]}"] * (hi - lo)
        mrr += metrics[f"mrr@{top.shape[1]}"] * (hi - lo)
    n = max(len(cases), 1)
    return {f"hr@{k}": hr / n, f"mrr@{k}": mrr / n, "events": len(cases)}


# --------------------------------------------------------------------------- tuning
def validation_split(sessions: Sessions, share: float = 0.1) -> tuple[Sessions, Sessions]:
    """(fit, validation): the latest ``share`` of the sessions by start time are held out,
    like the test split holds out the latest days, so tuning rewards what generalises forward
    in time."""
    if not 0 < share < 1:
        raise ValueError(f"share={share} must be between 0 and 1 (exclusive)")
    order = np.argsort(sessions.start, kind="stable")
    n_val = max(1, round(share * len(order)))
    if n_val >= len(order):
        raise ValueError(
            f"share={share} of {len(order)} sessions leaves none to fit on; "
            "lower share or give more sessions."
        )
    cut = len(order) - n_val
    return sessions.select(order[:cut]), sessions.select(order[cut:])


def tune(
    model_cls: type[SessionModel],
    sessions: Sessions,
    n_items: int,
    k: int = 20,
    share: float = 0.1,
    max_trials: int | None = 30,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(best params, one row per trial ``{"params", "hr", "mrr"}``): each grid point is fitted
    on the earlier sessions and scored by MRR@k on the latest ``share``; the first best wins
    ties (grid order), so the result does not depend on float noise between equal settings."""
    fit_part, val_part = validation_split(sessions, share)
    cases = next_item_cases(val_part, known=np.unique(fit_part.items))
    if not len(cases):
        raise ValueError(
            f"the validation slice (last {share:.0%} of {len(sessions)} sessions) has no session "
            "with two known items; raise share or give more sessions."
        )
    points = grid_points(model_cls, max_trials, seed)
    log.info("tuning %s: %d trials, %d validation events", model_cls.name, len(points), len(cases))
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_mrr = -1.0
    for params in track(points, f"tune {model_cls.name}", unit="trials"):
        model = model_cls.fit(fit_part, n_items, **params)
        metrics = evaluate(model.score, cases, k)
        row = {"params": params, "hr": metrics[f"hr@{k}"], "mrr": metrics[f"mrr@{k}"]}
        table.append(row)
        log.debug("%s %s: HR@%d %.4f MRR@%d %.4f", model_cls.name, params, k, row["hr"], k,
                  row["mrr"])  # fmt: skip
        if row["mrr"] > best_mrr:
            best, best_mrr = params, row["mrr"]
    assert best is not None
    log.info("tuned %s: %s (MRR@%d %.4f)", model_cls.name, best, k, best_mrr)
    return best, table
