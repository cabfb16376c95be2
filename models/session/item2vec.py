"""item2vec as a session model: skip-gram item vectors, a visit scored by cosine similarity.

The skip-gram fit is :mod:`models.item2vec`'s own (the same pairs, sub-sampling, negatives and
per-worker fit as ``recsys item2vec``, in plain PyTorch or through Ray Train); only the coding
differs. Here the sessions arrive in the caller's vocabulary (the run's item vocabulary when a
source fits on them, indices ``1..n_items-1``), so nothing is re-coded: the counts that
sub-sampling and the negatives need are taken from the sessions themselves.

A prefix scores every item by its cosine similarity to the prefix's last ``recent`` known items,
the newest weighted 1 and each older one ``decay`` times the one after it (``decay=0``: the last
item alone), divided by the sum of the weights. The item just viewed is no evidence for itself
(its own cosine of 1 is left out: sessions collapse runs, so the next click is never the item on
screen); an earlier item of the visit keeps its own, weighted by its recency: going back to an
item is a common next click (27% of the held-out next clicks of the synthetic shop, 13% to the
item before the last), and leaving those terms out too cost 5-18 points of HR@20 for decay
0.1-1. Negative similarities are clipped to 0 (the session source reads a score <= 0 as no
evidence), and items the fit never paired with another item (never seen, below ``min_count``,
only in one-item sessions) score 0, as does column 0. Only the unit input vectors are kept:
saved as safetensors, the parameters as JSON.

Measured on the synthetic shop (2,000 items, 60 days, the last 7 held out, seed 0; HR@20 /
MRR@20 over 14.5k next-item events): the last item alone 0.567 / 0.106; the decayed prefix
rose with ``decay`` to 0.630 / 0.165 at 1 (0.634 / 0.166 over the last 10 items, the defaults;
``recent`` 3-20 moved it by < 1 point; seed 1 ranked every variant the same). Sequential rules
score 0.805 / 0.318 there: item2vec is other evidence for the ranker (items seen near each
other, in either order), not a better next-item model. Of the fit's parameters, sub-sampling
mattered most: ``subsample=1e-4`` (in the grid) gave 0.704 / 0.220 and a 3x faster fit; the
defaults stay those of ``recsys item2vec``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import ConfigDict, Field

from models.item2vec import (
    WEIGHTS,
    Item2VecConfig,
    fit_shard,
    train_func,
    train_plain,
    write_pairs,
)
from models.session.base import SessionModel, parse_params, register_model
from models.session.data import PAD, Sessions
from recsys.core.run import Run
from recsys.core.settings import Settings

PAIRS = "item2vec_pairs.npz"


class Item2VecSessionParams(Item2VecConfig):
    """:class:`~models.item2vec.Item2VecConfig` plus how a prefix is scored."""

    model_config = ConfigDict(extra="forbid")

    decay: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Weight of each older prefix item relative to the one after it "
        "(0: the last item alone; 1: the last ``recent`` items alike).",
    )
    recent: int = Field(default=10, ge=1, description="Last known prefix items scored from.")


BASE_FIELDS = tuple(Item2VecConfig.model_fields)


def training_sessions(
    sessions: Sessions, n_items: int, min_count: int
) -> tuple[Sessions, np.ndarray]:
    """(the sessions without 0s and items seen fewer than ``min_count`` times, the occurrences
    of every index in them): what :func:`models.item2vec.write_pairs` takes. Dropped items let
    their neighbours join, as :func:`models.session.data.build_sessions` does."""
    items = sessions.items
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"item2vec: sessions hold item indices {items.min()}..{items.max()} but "
            f"n_items={n_items}: code the sessions in the vocabulary of n_items entries "
            "(index 0 = padding)."
        )
    counts = np.bincount(items, minlength=n_items).astype(np.int64)
    counts[PAD] = 0
    keep = counts[items] >= max(min_count, 1)  # counts[PAD] = 0: padding always goes
    sessions = sessions.keep_items(keep)
    counts = np.bincount(sessions.items, minlength=n_items).astype(np.int64)
    return sessions, counts


def paired_items(sessions: Sessions, window: int, n_items: int) -> np.ndarray:
    """Items at least once within ``window`` of another item of their session: those a fit
    learns a vector for (before sub-sampling, which never drops a rare item)."""
    items, sess = sessions.items, sessions.session_index()
    paired = np.zeros(n_items, dtype=bool)
    for d in range(1, window + 1):
        ok = (sess[d:] == sess[:-d]) & (items[d:] != items[:-d])
        paired[items[d:][ok]] = True
        paired[items[:-d][ok]] = True
    paired[PAD] = False
    return paired


@register_model
class Item2VecSession(SessionModel):
    """Skip-gram item vectors; a prefix scores every item by the decayed cosine similarity to
    its last items (see the module docstring)."""

    name = "item2vec"
    defaults: ClassVar[dict[str, Any]] = Item2VecSessionParams().model_dump()
    grid: ClassVar[dict[str, Sequence[Any]]] = {"subsample": [1e-3, 1e-4], "decay": [0.5, 1.0]}

    def __init__(self, n_items: int, params: dict[str, Any], vectors: np.ndarray) -> None:
        super().__init__(n_items, params)
        if vectors.shape[0] != n_items:
            raise ValueError(f"item2vec: {vectors.shape[0]} vectors for n_items={n_items}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.known = np.abs(self.vectors).sum(axis=1) > 0
        self.fit_metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def _fit(
        cls,
        sessions: Sessions,
        n_items: int,
        params: dict[str, Any],
        threads: int,
        ray: Any,
        scratch: Path | None = None,
    ) -> Self:
        """Pairs in a temporary ``.npz`` (under ``scratch``: a folder every Ray worker sees),
        then ``ray(config)`` or the plain fit on it."""
        if n_items < 2:
            raise ValueError(f"item2vec: n_items={n_items} leaves no item (index 0 is padding)")
        p = parse_params(Item2VecSessionParams, params, "item2vec")
        started = time.perf_counter()
        cfg = Item2VecConfig(**p.model_dump(include=set(BASE_FIELDS)))
        sessions, counts = training_sessions(sessions, n_items, cfg.min_count)
        known = paired_items(sessions, cfg.window, n_items)
        if not known.any():
            raise ValueError(
                "item2vec: no two different items within the window of each other in one "
                "session: nothing to learn from. Give more (or longer) sessions."
            )
        with tempfile.TemporaryDirectory(prefix="item2vec_", dir=scratch) as tmp:
            n_pairs, config = write_pairs(sessions, counts, cfg, Path(tmp) / PAIRS, threads)
            if ray is None:
                state, metrics = train_plain(config)
            else:
                state, metrics = ray(config)
        vectors = state["input.weight"].detach().double().numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.where(known[:, None], vectors / np.maximum(norms, 1e-12), 0.0)
        model = cls(n_items, p.model_dump(), vectors.astype(np.float32))
        seconds = round(time.perf_counter() - started, 3)
        model.fit_metrics = {"backend": "in-process"} | metrics | {"seconds": seconds,
                                                                   "pairs": n_pairs}  # fmt: skip
        return model

    @classmethod
    def fit(cls, sessions: Sessions, n_items: int, *, threads: int = 1, **params: Any) -> Self:
        """Plain PyTorch in this process on ``threads`` torch threads (the caller's count is
        restored after): :func:`models.item2vec.train_plain` on the sessions' pairs."""
        if threads < 1:
            raise ValueError(f"item2vec: threads must be >= 1, got {threads}")
        return cls._fit(sessions, n_items, params, threads, None)

    @classmethod
    def fit_ray(cls, settings: Settings, sessions: Sessions, n_items: int, **params: Any) -> Self:
        """The same fit on ``settings.train.num_workers`` Ray Train workers
        (:func:`models.item2vec.train_func`; DDP all-reduces the sparse gradients when more than
        one). The pairs go through a temporary file under the data root's scratch folder,
        which every node of a cluster sees (``Settings.scratch_dir``)."""
        from recsys.core.ray_runtime import fit_torch, worker_threads

        def on_ray(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            name = f"item2vec_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}"
            state, metrics, _ = fit_torch(settings, train_func, config, name, WEIGHTS,
                                          plain=fit_shard)  # fmt: skip
            return state, metrics

        return cls._fit(sessions, n_items, params, worker_threads(settings), on_ray,
                        settings.scratch_dir)  # fmt: skip

    # ------------------------------------------------------------------ scoring
    def prefix_weights(self, prefixes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(items, weights): each prefix's last ``recent`` known items (0-padded on the left)
        and their weights, ``decay ** age`` (the newest has age 0), 0 on padding."""
        recent, decay = int(self.params["recent"]), float(self.params["decay"])
        items = np.zeros((len(prefixes), recent), dtype=np.int64)
        for r, prefix in enumerate(prefixes):
            p = np.asarray(prefix, dtype=np.int64).ravel()
            if len(p) and (p.min() < 0 or p.max() >= self.n_items):
                bad = p[(p < 0) | (p >= self.n_items)][0]
                raise ValueError(
                    f"prefix item index {int(bad)} is outside 0..{self.n_items - 1}: the "
                    "prefixes are coded in another vocabulary than the model was fitted on."
                )
            p = p[self.known[p]][-recent:]
            if len(p):
                items[r, recent - len(p) :] = p
        ages = np.arange(recent - 1, -1, -1, dtype=np.float64)
        weights = np.where(items != PAD, decay**ages, 0.0)  # 0 ** 0 = 1: the last item
        return items, weights.astype(np.float32)

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        items, weights = self.prefix_weights(prefixes)
        total = weights.sum(axis=1)
        weights = weights / np.maximum(total, 1e-12)[:, None]
        vectors = self.vectors[items]  # (B, L, D); padding's row is zero
        scores = np.einsum("bl,bld->bd", weights, vectors) @ self.vectors.T
        # The last item again, without its own terms (it is no evidence for itself): computed
        # exactly, where subtracting a cosine of 1 from the sum would leave rounding noise.
        last = items[:, -1]
        other = items != last[:, None]  # (B, L): not the last item (nor any repeat of it)
        cross = np.einsum("bl,bld,bd->b", weights * other, vectors, vectors[:, -1])
        rows = np.flatnonzero(last != PAD)
        scores[rows, last[rows]] = cross[rows]
        np.maximum(scores, 0.0, out=scores)
        scores[:, PAD] = 0.0
        return scores.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ persistence
    def save(self, run: Run, part: str) -> None:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_tensors(part, {"vectors": self.vectors})
        self.save_params(run, part)

    @classmethod
    def load(cls, run: Run, part: str) -> Self:
        n_items, params = cls.read_params(run, part)
        p = parse_params(Item2VecSessionParams, params, "item2vec")
        vectors = run.read_tensors(part)["vectors"]
        return cls(n_items, p.model_dump(), vectors)
