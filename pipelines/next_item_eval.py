"""``recsys evaluate --task next-item``: the session pipeline against the session-rec peers.

Protocol (session-rec's ``evaluate_sessions``, Ludewig & Jannach 2018): the served run's cutoff
splits the sessions: those starting at or after it are held out. Test items unknown to the
training sessions are dropped, then every prefix of every held-out session predicts the next
item (repeats stay in: going back to an item is a next click like any other); HR@20 and MRR@20
are averaged over these events.

In the same run, on the same cases:

* **served**: the session pipeline exactly as the API runs it (``POST /recommendations`` with
  ``hide_seen=false``), loaded from the served run;
* **its sources alone**: each session model of the run in its own order (the ablation that says
  what each source and the ranker add);
* **peers**: popularity, co-occurrence, sequential rules (SR) and session kNN (V-SkNN), each
  tuned on a validation slice of the training sessions (the newest share, fitted on the rest),
  then refitted on every training session with the chosen parameters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.context import UserContext
from models.served_pipeline import ServedPipeline
from models.session.base import MODELS
from models.session.data import Sessions, build_sessions
from models.session.protocol import NextItemCases, Scorer, evaluate, next_item_cases, tune
from models.sources.session import SessionModelSource
from models.two_tower import load_two_tower
from pipelines.served_eval import served_run
from pipelines.session_training import NEXT_CLICK
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from recsys.core.vocab import Vocabulary

log = logging.getLogger(__name__)
PEERS = ("cooccurrence", "sr", "vsknn")  # tuned session models; popularity is computed here


def ranked_scores(lists: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """A score matrix that orders each row's items as in ``lists`` (best first) and every
    other item below them: how a top-k answer enters the score-based protocol."""
    out = np.zeros((len(lists), n_items), dtype=np.float32)
    for row, items in enumerate(lists):
        out[row, np.asarray(items, dtype=np.int64)] = np.arange(len(items), 0, -1)
    return out


def served_scorer(pipeline: ServedPipeline, k: int) -> Scorer:
    """The served session pipeline as a scorer of prefixes (oldest item first)."""
    ids = pipeline.catalog.item_ids

    def score(prefixes: Sequence[np.ndarray]) -> np.ndarray:
        lists = []
        for prefix in prefixes:
            visit = [ids[i - 1] for i in prefix[::-1].tolist()]
            ranking = pipeline.recommend(UserContext(None, (), visit), k, NEXT_CLICK)
            lists.append([r.index for r in ranking.items])
        return ranked_scores(lists, pipeline.catalog.n_items)

    return score


def popularity_scorer(sessions: Sessions, n_items: int) -> Scorer:
    """Every prefix gets the most viewed items of the training sessions."""
    counts = np.bincount(sessions.items, minlength=n_items).astype(np.float32)
    counts[0] = 0.0
    return lambda prefixes: np.tile(counts, (len(prefixes), 1))


def next_item_split(
    settings: Settings, vocab: Vocabulary, cutoff: pd.Timestamp
) -> tuple[Sessions, Sessions, NextItemCases]:
    """(training sessions, held-out sessions, the protocol's cases) of the validated
    interactions split at ``cutoff``, coded in ``vocab``: what every model here is fitted and
    scored on (and what ``benchmarks/session_ablation.py`` reuses)."""
    path = table_path(settings.validated_dir, "interactions")
    limit = settings.features.duckdb_memory_limit
    train, _ = build_sessions(path, vocab, before=cutoff, memory_limit=limit)
    heldout, _ = build_sessions(path, vocab, drop_unknown=False, starting_from=cutoff,
                                memory_limit=limit)  # fmt: skip
    return train, heldout, next_item_cases(heldout, np.unique(train.items))


def evaluate_next_item(
    settings: Settings, k: int = 20, tune_peers: bool = True, progress: Any = log.info
) -> dict[str, Any]:
    """Score the served session pipeline, its sources alone and the tuned peers (see above)."""
    run = served_run(settings)
    if run is None:
        raise FileNotFoundError("no trained run: run `recsys train` first")
    _, _, items = load_two_tower(run)
    vocab = items.vocab
    pipeline = ServedPipeline.load_session(run, settings, vocab)
    if pipeline is None:
        raise FileNotFoundError(
            f"{run.path} has no session pipeline: the data had too few sessions, or "
            "RECSYS_SESSIONS__ENABLED was false when it was trained"
        )
    cutoff = pd.Timestamp(run.manifest["data"]["cutoff"])
    train, heldout, cases = next_item_split(settings, vocab, cutoff)
    known = np.unique(train.items)
    n_items = vocab.size
    progress(f"  {len(heldout):,} sessions after {cutoff:%Y-%m-%d}: {cases.events:,} next-item "
             f"events; {len(train):,} training sessions, {len(known):,} items")  # fmt: skip

    def scored(name: str, scorer: Scorer, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics = evaluate(scorer, cases, k)
        out = {**metrics, "seconds": round(time.perf_counter() - t0, 2), **(extra or {})}
        progress(f"    {name}: HR@{k} {metrics[f'hr@{k}']:.4f}, MRR@{k} "
                 f"{metrics[f'mrr@{k}']:.4f} ({out['seconds']:.1f}s)")  # fmt: skip
        return out

    models: dict[str, dict[str, Any]] = {"popularity": scored(
        "popularity", popularity_scorer(train, n_items), {"params": {}})}  # fmt: skip
    for name in PEERS:
        model_cls = MODELS[name]
        t0 = time.perf_counter()
        params, trials = (tune(model_cls, train, n_items, k=k, seed=settings.train.seed)
                          if tune_peers else (dict(model_cls.defaults), []))  # fmt: skip
        fitted = model_cls.fit(train, n_items, **params)
        fit_seconds = round(time.perf_counter() - t0, 2)
        models[name] = scored(name, fitted.score, {"params": params, "fit_seconds": fit_seconds,
                                                   "tuning": trials})  # fmt: skip
    alone = {
        source.name: scored(f"{source.name} (served source alone)", source.fitted.score)
        for source in pipeline.generator.sources
        if isinstance(source, SessionModelSource)
    }
    served = scored("served session pipeline", served_scorer(pipeline, k))
    best = max(models, key=lambda n: models[n][f"mrr@{k}"])
    ratios = {
        f"mrr@{k}_vs_best_peer": served[f"mrr@{k}"] / max(models[best][f"mrr@{k}"], 1e-12),
        f"hr@{k}_vs_best_peer": served[f"hr@{k}"] / max(models[best][f"hr@{k}"], 1e-12),
    }
    return {
        "task": "next-item",
        "k": k,
        "run": run.id,
        "protocol": {
            "cutoff": str(cutoff),
            "split": "sessions starting at or after the served run's cutoff are held out",
            "targets": "every next item of a held-out session; unknown items dropped, "
            "repeats kept (session-rec evaluate_sessions)",
            "tuning": "peers tuned on the newest 10% of training sessions, fitted on the rest"
            if tune_peers
            else "defaults",
        },
        "dataset": {
            "train_sessions": len(train),
            "heldout_sessions": len(heldout),
            "events": cases.events,
            "items": len(known),
        },
        "models": models,
        "served": served | {"sources_alone": alone, "best_peer": best, **ratios},
    }
