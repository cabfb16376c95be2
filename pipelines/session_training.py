"""Fit the session pipeline: session sources and their own ranker (part of ``recsys train``).

The session pipeline answers "what will this visitor look at next?" from the items of the
visit (``POST /recommendations``, ``similar?method=sessions``). Its protocol mirrors the user
pipeline's (``pipelines/ranking.py``), with sessions in place of users:

1. **Label slice.** The newest ``sessions.label_share`` of the training sessions (at most
   ``sessions.label_sessions``) are held out; every prefix of each one, with the item that came
   next as its label, is a ranker case (next-click: the visit's own items may come back).
2. **Sources on the rest.** The session models (sequential rules, session kNN, SLIST, ...),
   item-item neighbours and popularity are fitted on the sessions and signal events before the
   first label session, so the ranker learns from rows that look like serving rows.
3. **Ranker.** The same LightGBM design as the user pipeline's, compared with each source
   alone on 10% of the label sessions.
4. **Refit.** The sources are fitted again on every training session for serving.

Everything is saved under the run's ``session`` folder (:data:`SESSION_PIPELINE`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.candidates import CandidateGenerator
from models.context import ItemFilters, UserContext
from models.served_pipeline import SESSION_PIPELINE
from models.session.data import Sessions, build_sessions
from pipelines.ranking import fit_ranker
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.vocab import Vocabulary

log = logging.getLogger(__name__)
#: Next-click rows: the items of the visit stay candidates (going back is a common next click).
NEXT_CLICK = ItemFilters(hide_seen=False)
#: Fewer label sessions than this cannot train a ranker: the data gets no session pipeline.
MIN_LABEL_SESSIONS = 20


def next_click_cases(sessions: Sessions, vocab: Vocabulary) -> list[tuple[UserContext, set[str]]]:
    """Every prefix of every session (newest item first, as a visit is served) with the item
    that came next."""
    cases = []
    for s in range(len(sessions)):
        ids = [vocab.id(i) for i in sessions.items[sessions.offsets[s] : sessions.offsets[s + 1]]]
        for t in range(1, len(ids)):
            cases.append((UserContext(None, (), ids[:t][::-1]), {ids[t]}))
    return cases


def fit_session_pipeline(
    settings: Settings,
    interactions: Path,
    signal_events: pd.DataFrame,
    vocab: Vocabulary,
    catalog: pd.DataFrame,
    cutoff: pd.Timestamp,
    run: Run,
    progress: Any = print,
) -> dict[str, Any] | None:
    """Steps 1-4 of the module docstring on the sessions before ``cutoff`` of the canonical
    ``interactions`` Parquet file (every event type, with ``session_id`` where known; DuckDB
    builds them, so the log is never one pandas frame) and on ``signal_events`` (user_id,
    item_id, timestamp of the signal events before ``cutoff``, what the purchase-based sources
    fit on); returns the manifest block, or None (logged) when the data has too few sessions
    of two or more items for a session pipeline."""
    cfg = settings.sessions
    started = time.perf_counter()
    sessions, _ = build_sessions(interactions, vocab, before=cutoff,
                                 memory_limit=settings.features.duckdb_memory_limit)  # fmt: skip
    lengths = np.diff(sessions.offsets)
    multi = np.flatnonzero(lengths >= 2)
    n_labels = min(cfg.label_sessions, int(cfg.label_share * len(multi)))
    if n_labels < MIN_LABEL_SESSIONS:
        needed = math.ceil(MIN_LABEL_SESSIONS / cfg.label_share)
        progress(f"  session pipeline skipped: {len(multi):,} training sessions have two or "
                 f"more items; it needs {needed:,} (RECSYS_SESSIONS__LABEL_SHARE "
                 f"{cfg.label_share} of them give its ranker's rows)")  # fmt: skip
        return None
    label_start = sessions.start[multi[-n_labels]]  # sessions are ordered by their start
    before = sessions.start < label_start
    labels = sessions.select((sessions.start >= label_start) & (lengths >= 2))
    fit_sessions = sessions.select(before)
    label_time = pd.Timestamp(label_start, tz="UTC")
    when = pd.to_datetime(signal_events["timestamp"], utc=True)
    fit_signal = signal_events[(when < label_time).to_numpy()]

    def fit_generator(
        on: Sessions, purchases: pd.DataFrame, end: pd.Timestamp
    ) -> CandidateGenerator:
        return CandidateGenerator.fit(settings, vocab, purchases, catalog, None, end, None,
                                      task="session", sessions=on)  # fmt: skip

    generator = fit_generator(fit_sessions, fit_signal, label_time)
    progress(f"  session sources on {len(fit_sessions):,} sessions before "
             f"{label_time:%Y-%m-%d %H:%M}: {generator.describe()} "
             f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
    cases = next_click_cases(labels, vocab)
    ranker, stats = fit_ranker(settings, generator, cases, progress, "session step",
                               "RECSYS_SESSIONS__LABEL_SESSIONS", NEXT_CLICK,
                               settings.sessions.negative_share)  # fmt: skip
    t0 = time.perf_counter()
    final = fit_generator(sessions, signal_events, cutoff)
    out = run.sub(SESSION_PIPELINE, create=True)
    final.save(out)
    ranker.save(out)
    progress(f"  session sources refitted on all {len(sessions):,} training sessions "
             f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return {
        "features": list(final.features),
        "label_sessions": len(labels),
        "label_start": str(label_time),
        "rows": stats,
        "ranker": ranker.info,
        "sources": {s.name: s.summary() for s in final.sources},
        "seconds": round(time.perf_counter() - started, 2),
    }
