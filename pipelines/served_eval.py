"""Score the served pipeline in ``recsys evaluate``: the API's code, called for every test user.

The current run (``artifacts/current``) is loaded exactly as the API loads it: its two-tower
model, its candidate sources, its ranker, and the vector store collection that ``recsys index``
built (searched through HNSW with the same filters). Each test user's context comes from
Feast's ``get_historical_features`` as of the run's cutoff, i.e. the row the online store held
when the test period began; users without one get the anonymous-visitor answer, as in the API.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from models.candidates import own_order
from models.ranker import RANKER
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.terminal import track
from recsys.core.values import is_missing

log = logging.getLogger(__name__)


def served_run(settings: Settings) -> Run | None:
    """The run the API would serve, None if there is none (or it has no ranker)."""
    try:
        run = Run.current(settings.artifacts_dir)
    except FileNotFoundError:
        return None
    return run if run.has(RANKER, "text") else None


def evaluate_served(
    settings: Settings, eval_users: list[str], k: int, as_of: pd.Timestamp, progress: Any = log.info
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Rankings of the served pipeline for ``eval_users`` and a description of the run."""
    from models.served_pipeline import ServedPipeline
    from models.sources.two_tower import store_search
    from pipelines.train import RANKING_USER_REFS, user_vectors
    from recsys.core.feast_store import historical_features, open_store
    from recsys.core.vectorstore import open_vector_store

    run = served_run(settings)
    if run is None:
        raise FileNotFoundError("no run with a ranker: run `recsys train` and `recsys index`")
    manifest = run.manifest
    store = open_vector_store(settings.vector_store, settings.home)
    try:
        pipeline = ServedPipeline.load(run, settings, store_search(lambda: store))
        started = time.perf_counter()
        entity_df = pd.DataFrame({"user_id": eval_users, "event_timestamp": as_of})
        frame = historical_features(open_store(settings), entity_df, RANKING_USER_REFS)
        frame = frame.drop_duplicates("user_id").set_index("user_id").reindex(eval_users)
        frame = frame.rename_axis("user_id").reset_index()
        features = frame.drop(columns=["user_id", "event_timestamp"], errors="ignore")
        known = features.notna().any(axis=1).to_numpy()
        frame["purchased_items"] = [
            list(v) if isinstance(v, list | np.ndarray) else [] for v in frame["purchased_items"]
        ]
        vectors = user_vectors(pipeline.model, pipeline.users, pipeline.items, frame)
        records = frame.drop(columns=["event_timestamp"], errors="ignore").to_dict("records")
        features_seconds = time.perf_counter() - started
        rankings: dict[str, list[str]] = {}
        per_source: dict[str, dict[str, list[str]]] = {}
        sources: Counter[str] = Counter()  # sources of each top-10 item
        t0 = time.perf_counter()
        for i, user in enumerate(track(eval_users, "served pipeline", unit="users")):
            if known[i]:
                row = {key: value for key, value in records[i].items() if not is_missing(value)}
                ctx = pipeline.context(user, row, vector=vectors[i])
            else:
                ctx = pipeline.context(user, None)
            ranking = pipeline.recommend(ctx, k, keep_candidates=True)
            ranked = ranking.items
            rankings[user] = [r.item_id for r in ranked]
            for source, ids in source_rankings(ranking.candidates, pipeline, k).items():
                per_source.setdefault(source, {})[user] = ids
            sources.update(s for r in ranked[:10] for s in r.sources)
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    per_user_ms = 1e3 * seconds / max(len(eval_users), 1)
    progress(f"    served: {len(eval_users):,} users in {seconds:.1f}s ({per_user_ms:.2f} ms/user)")
    info = {
        "run": run.id,
        "as_of": str(as_of),
        "trained_on": manifest.get("data", {}).get("evaluation"),
        "ranking": {key: manifest.get("ranking", {}).get(key)
                    for key in ("label_users", "rows", "sources")},
        "features_seconds": round(features_seconds, 2),
        "recommend_seconds": round(seconds, 2),
        "ms_per_user": round(per_user_ms, 3),
        "top10_source_share": {s: round(n / max(sum(sources.values()), 1), 4)
                               for s, n in sorted(sources.items())},
        "source_rankings": per_source,
    }  # fmt: skip
    return rankings, info


def source_rankings(cand, pipeline, k: int) -> dict[str, list[str]]:
    """Each source's own top-k among the candidates, before the ranker and the rules."""
    if cand is None or len(cand) == 0:
        return {}
    return {
        source.name: [pipeline.catalog.item_id(int(i)) for i in cand.items[own_order(
            source, cand.features, cand.feature_names, np.flatnonzero(cand.sources[source.name])
        )[:k]]]
        for source in pipeline.generator.sources
    }  # fmt: skip
