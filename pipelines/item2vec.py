"""Train item2vec on shopping sessions through Ray Train, and evaluate next-item prediction.

Flow: the validated interactions are read with DuckDB and split by time: events before the
cutoff make the training sessions, sessions that *start* at or after it are held out (a
session straddling the cutoff is used only for its part before it, so nothing after the
cutoff leaks into training). Training sessions become skip-gram pairs on the driver, in an
``.npz`` that each Ray Train worker (:func:`models.item2vec.train_func`) or
:func:`models.item2vec.train_plain` fits on.

Evaluation: for every step t >= 1 of a held-out session, predict item t from item t-1 and
score HR@K and MRR@K for item2vec (cosine neighbours of item t-1) against a co-occurrence
baseline (the items most often within the window of item t-1 in training sessions) and
popularity. All three fall back to popularity when item t-1 was never seen in training, and
a step to an item never seen in training is a miss for all of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from models.item2vec import (
    WEIGHTS,
    Item2Vec,
    Item2VecConfig,
    Item2VecRun,
    cosine_topk,
    fit_shard,
    load_item2vec,
    save_item2vec,
    skipgram_pairs,
    train_func,
    write_pairs,
)
from models.metrics import next_item_metrics
from models.popularity import popularity_order
from models.session.data import PAD, Sessions, build_sessions
from recsys.core.ray_runtime import ensure_ray, fit_torch, ray_wanted, worker_threads
from recsys.core.run import Run
from recsys.core.schema import EVENT_TYPES, REQUIRED_COLUMNS, table_path
from recsys.core.settings import Settings
from recsys.core.sql import parquet

log = logging.getLogger(__name__)
PAIRS = "item2vec_pairs.npz"
EVAL_K = 20


@dataclass
class Item2VecResult:
    """What :func:`fit_item2vec` produced: where it saved, the metrics, the loaded run."""

    out_dir: Path
    metrics: dict[str, Any]
    run: Item2VecRun


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class EventSpan:
    """How many session events (views, carts, purchases) a log holds and when they end."""

    events: int
    last: pd.Timestamp | None

    def default_cutoff(self, test_days: int) -> pd.Timestamp:
        """Midnight ``test_days`` whole days before the day after the last event."""
        if self.last is None:
            raise ValueError("the interactions have no view, add_to_cart or purchase events.")
        return self.last.floor("D") + pd.Timedelta(days=1) - pd.Timedelta(days=test_days)


def event_span(path: Path, before: pd.Timestamp | None = None) -> EventSpan:
    """:class:`EventSpan` of the canonical interactions at ``path`` (those before ``before``
    when given), counted by DuckDB without reading the events into memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `recsys validate` first.")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        source = parquet(path)
        columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        missing = set(REQUIRED_COLUMNS["interactions"]) - columns
        if missing:
            raise ValueError(
                f"{path} lacks column(s) {sorted(missing)}: item2vec needs the canonical "
                "interactions table (recsys/core/schema.py)."
            )
        window = "" if before is None else 'AND "timestamp" < ?'
        n, last = con.execute(
            f"""SELECT count(*), max("timestamp") FROM {source}
                WHERE list_contains(?, event_type) {window}""",
            [list(EVENT_TYPES), *([] if before is None else [before])],
        ).fetchone()
    if last is None:
        return EventSpan(int(n), None)
    last = pd.Timestamp(last)
    last = last.tz_localize("UTC") if last.tzinfo is None else last.tz_convert("UTC")
    return EventSpan(int(n), last)


# --------------------------------------------------------------------------- evaluation
def next_item_steps(sessions: Sessions) -> tuple[np.ndarray, np.ndarray]:
    """(item t-1, item t) for every step t >= 1 inside each session."""
    sess = sessions.session_index()
    same = sess[1:] == sess[:-1]
    return sessions.items[:-1][same], sessions.items[1:][same]


def _fill_popular(top: np.ndarray, queries: np.ndarray, popular: np.ndarray) -> np.ndarray:
    """Fill the -1 holes of each row with popular items not yet listed and not the query."""
    k = top.shape[1]
    head = popular[: 2 * k + 1]  # enough: at most k listed + the query itself to skip
    for r in np.flatnonzero((top < 0).any(axis=1)):
        row = top[r]
        have = set(row[row >= 0].tolist()) | {int(queries[r])}
        fill = [p for p in head.tolist() if p not in have][: int((row < 0).sum())]
        row[row < 0] = np.pad(fill, (0, int((row < 0).sum()) - len(fill)), constant_values=-1)
    return top


def cooccurrence_topk(
    center: np.ndarray, context: np.ndarray, counts: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    """For each (unique, sorted) query index: the items most often paired with it, ties by
    popularity, filled up with popular items. Sparse: never builds a V x V matrix."""
    n = len(counts)
    keys, together = np.unique(center.astype(np.int64) * n + context, return_counts=True)
    c, x = keys // n, keys % n
    sel = np.isin(c, queries)
    c, x, together = c[sel], x[sel], together[sel]
    order = np.lexsort((x, -counts[x], -together, c))
    c, x = c[order], x[order]
    rank = np.arange(len(c)) - np.searchsorted(c, c, "left")
    take = rank < k
    top = np.full((len(queries), k), -1, dtype=np.int64)
    top[np.searchsorted(queries, c[take]), rank[take]] = x[take]
    return _fill_popular(top, queries, popularity_order(counts))


def evaluate_next_item(
    vectors: np.ndarray,
    counts: np.ndarray,
    center: np.ndarray,
    context: np.ndarray,
    heldout: Sessions,
    k: int = EVAL_K,
) -> dict[str, Any]:
    """Next-item HR@K / MRR@K on held-out sessions: item2vec (unit ``vectors``, row = index)
    vs co-occurrence (of the training pairs ``center``/``context``) vs popularity (``counts``)."""
    prev, target = next_item_steps(heldout)
    if len(prev) == 0:
        raise ValueError(
            "no held-out session has two items: nothing to evaluate. Move the cutoff earlier "
            "or generate more data."
        )
    queries, inverse = np.unique(prev, return_inverse=True)
    popular = popularity_order(counts)
    known = queries != PAD
    i2v = np.full((len(queries), k), -1, dtype=np.int64)
    top = cosine_topk(vectors, queries[known], k)[0]  # fewer than k columns in a tiny catalogue
    i2v[np.flatnonzero(known), : top.shape[1]] = top
    i2v = _fill_popular(i2v, queries, popular)
    cooc = cooccurrence_topk(center, context, counts, queries, k)
    pop = _fill_popular(np.full((len(queries), k), -1, dtype=np.int64), queries, popular)
    return {
        "k": k,
        "item2vec": next_item_metrics(i2v[inverse], target),
        "cooccurrence": next_item_metrics(cooc[inverse], target),
        "popularity": next_item_metrics(pop[inverse], target),
        "random_hr": round(min(1.0, k / max(len(popular), 1)), 6),
        "steps": len(prev),
        "unknown_prev": int((prev == PAD).sum()),
        "unknown_target": int((target == PAD).sum()),
        "heldout_sessions": len(heldout),
    }


# --------------------------------------------------------------------------- driver
def fit_item2vec(
    settings: Settings,
    interactions_path: Path | None = None,
    out_dir: Path | None = None,
    cfg: Item2VecConfig | None = None,
    cutoff: pd.Timestamp | datetime | str | None = None,
    use_ray: bool | None = None,
) -> Item2VecResult:
    """Sessions -> pairs -> fit (Ray Train or in-process, :func:`ray_wanted` of ``use_ray``) ->
    evaluate -> save to ``out_dir``
    (default ``artifacts/item2vec_<time>``), the cutoff by default ``settings.train.test_days``
    before the end of the data (as the two-tower model uses). The metrics hold ``item2vec`` and
    ``cooccurrence`` HR/MRR@20, ``pairs``, ``events`` (training events) and ``fit``."""
    cfg = cfg or Item2VecConfig()
    path = Path(interactions_path or table_path(settings.validated_dir, "interactions"))
    span = event_span(path)
    if span.events == 0:
        raise ValueError(f"{path} has no view, add_to_cart or purchase events.")
    if cutoff is None:
        cutoff = span.default_cutoff(settings.train.test_days)
    cutoff = pd.Timestamp(cutoff)
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    limit = settings.features.duckdb_memory_limit
    train_sessions, vocab = build_sessions(path, min_count=cfg.min_count, before=cutoff,
                                           memory_limit=limit)  # fmt: skip
    heldout, _ = build_sessions(path, vocab, drop_unknown=False, starting_from=cutoff,
                                memory_limit=limit)  # fmt: skip
    if not len(train_sessions) or not len(heldout):
        raise ValueError(
            f"cutoff {cutoff} leaves {len(train_sessions)} training sessions and "
            f"{len(heldout)} held-out sessions: pick a cutoff inside the data "
            f"(the last event is at {span.last})."
        )
    n_events = event_span(path, before=cutoff).events
    run = Run(Path(out_dir)) if out_dir else Run.create(settings.artifacts_dir, "item2vec_")
    run.path.mkdir(parents=True, exist_ok=True)
    use_ray = ray_wanted(settings, use_ray)
    workers = settings.train.num_workers if use_ray else 1
    threads = worker_threads(settings, workers)
    arrays = run.file(PAIRS)
    n_pairs, config = write_pairs(train_sessions, vocab.counts, cfg, arrays, threads)
    log.info(
        "item2vec: %d training events, %d sessions, %d items, %d pairs (cutoff %s)",
        n_events,
        len(train_sessions),
        vocab.size - 1,
        n_pairs,
        cutoff,
    )

    started = time.perf_counter()
    try:
        if use_ray:
            ensure_ray(settings)  # timed apart from the fit
        ray_started = time.perf_counter()
        state, fit_metrics, _ = fit_torch(settings, train_func, config, f"item2vec_{run.id}",
                                          WEIGHTS, plain=fit_shard, use_ray=use_ray)  # fmt: skip
        if use_ray:
            fit_metrics["ray_init_seconds"] = round(ray_started - started, 2)
    finally:
        arrays.unlink(missing_ok=True)  # derived data; the sessions can always be rebuilt
    fit_seconds = time.perf_counter() - started
    model = Item2Vec(vocab.size, cfg.dim)
    model.load_state_dict(state)

    # The baseline counts every pair of the same sessions and window, *without* sub-sampling
    # (a superset of item2vec's pairs): sub-sampling is a training device for the embedding
    # that, applied to counting, would only throw away evidence about best-sellers.
    pairs = skipgram_pairs(train_sessions, cfg.window, np.random.default_rng(cfg.seed))
    evaluation = evaluate_next_item(model.item_vectors().numpy(), vocab.counts, *pairs, heldout)
    metrics = {
        **evaluation,
        "pairs": n_pairs,
        "events": n_events,
        "sessions": len(train_sessions),
        "items": vocab.size - 1,
        "cutoff": str(cutoff),
        "fit": {
            "workers": workers,
            "threads": threads,
            "seconds": round(fit_seconds, 2),
            **{k: v for k, v in fit_metrics.items() if k != "pairs"},
        },
    }
    data = {"interactions": str(path), "cutoff": str(cutoff)}
    save_item2vec(run, model, vocab, cfg, metrics, {"data": data})
    log.info(
        "item2vec saved to %s: HR@%d %.4f (co-occurrence %.4f)",
        run.path,
        EVAL_K,
        evaluation["item2vec"][f"hr@{EVAL_K}"],
        evaluation["cooccurrence"][f"hr@{EVAL_K}"],
    )
    return Item2VecResult(run.path, metrics, load_item2vec(run))
