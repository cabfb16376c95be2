"""``recsys evaluate``: every classic peer, tuned fairly, on one split, with one set of metrics.

Protocol (recorded in the output's ``protocol`` block):

* **Split.** A holdout file (``--holdout``, or ``validated/holdout.parquet`` written by an
  importer such as ASOS) is the test set and the validated interactions are the training set;
  otherwise (``--split temporal``) time is cut at the served run's cutoff (so that the served
  pipeline and the peers share one split) or, with ``--test-fraction``, at that timestamp
  quantile. Purchases are used when the data has any, else all events.
* **Truth.** Per user: test items minus that user's training items. Every model gets the same
  exclusion of already-seen items, so no model is rewarded for re-recommending purchases.
* **Cold users.** Test users without training interactions are ranked by popularity by every
  model and still count in ``overall``; segment ``cold_users`` = users with <= 2 training
  interactions, ``cold_items`` = truth restricted to items with <= 2 training interactions.
* **Tuning.** Hyper-parameters are chosen on a validation slice carved from the *training*
  data only (one random training item held out per user with >= 2 items), by Recall@10, then
  the model is refitted on all training data. The test set is scored once.
* **Served pipeline.** The current run (``recsys train`` + ``recsys index``) through the API's
  own code (:mod:`pipelines.served_eval`): its candidates, ranker, vector search and business
  rules, with Feast user rows as of the run's cutoff. Its sources were fitted on the same
  training events; it is refused when its training data reaches past the split's cutoff.

Output JSON schema (``evaluation.json``)::

    {"dataset": {train_rows, test_rows, train_users, train_items, test_users, eval_users,
                 cold_test_users, cold_user_segment_users, cold_item_segment_users, ...},
     "protocol": {split, events, holdout, test_fraction, cutoff, ks, map_ks, curve_ks, k_max,
                  cold_threshold, tuning: {metric, validation_users, grids, budget_s}},
     "models": {name: {"overall": {metric: value, "curve": {"k": [...], "recall": [...],
                                                          "ndcg": [...]}},
                       "cold_users": {...} | null, "cold_items": {...} | null,
                       "popularity_deciles": [10 shares of the top-10 slots, D1 .. D10],
                       "params": {...},
                       "tuning": [{"params": {...}, "recall@10": float, "seconds": float}],
                       "tuning_note": str | null, "fit_seconds": float,
                       "recommend_seconds": float}},
     "served": {"overall": {...}, "cold_users": ..., "cold_items": ..., "popularity_deciles":
                [...], "sources_alone": {source: {...}}, "run": str, "as_of": str,
                "ranking": {...}, "ms_per_user": float,
                "top10_source_share": {source: share}} | {"error": str},
     "popularity": {"k": 10, "definition": str, "item_count_range": [[lo, hi] x 10],
                    "truth": [10 shares of the test pairs]},
     "seconds": float, "created_at": str}

Every segment block (``overall``, ``cold_users``, ``cold_items``, ``sources_alone``'s) carries
its ``curve`` (Recall@K and NDCG@K at ``curve_ks``: 1, 5, 10, 20, 50, 100 up to ``k_max``).
``write_report`` renders it all as ``report.html`` (:mod:`pipelines.evaluation_report`, which
also renders older files without ``curve`` / ``popularity_deciles`` / ``popularity``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.baselines import ALS, EASE, BaselineModel, InteractionMatrix, ItemKNN, LocalEASE
from models.metrics import (
    curve_ks,
    decile_shares,
    evaluate_all,
    evaluate_with_curve,
    popularity_deciles,
)
from models.popularity import Popularity, RecentPopularity
from pipelines.evaluation_report import metric_columns, recall_png, rows, write_html_report
from pipelines.served_eval import evaluate_served, served_run
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from recsys.core.signal import signal_event
from recsys.core.sql import parquet, sql_str

log = logging.getLogger(__name__)

Split = Literal["holdout", "temporal"]

COLD_THRESHOLD = 2
TUNE_METRIC = "recall@10"
MAX_VALIDATION_USERS = 10_000
DEFAULT_TEST_FRACTION = 0.1
TOP10 = ("recall@10", "ndcg@10")  # the report's segment and per-source tables
BIAS_K = 10  # the popularity-decile profile is of each model's top 10, like coverage@10

# RecBole-style search spaces. ALS fits in seconds, so its whole grid (27 points) is tried: a
# sample of 8 missed the best region on ASOS (0.0309 against ~0.035 published).
GRIDS: dict[str, dict[str, list[float | int]]] = {
    "item_knn": {"k": [50, 100, 200]},
    "als": {
        "factors": [64, 128, 256],
        "regularization": [0.05, 0.5, 5.0],
        "alpha": [5.0, 20.0, 50.0],
        "iterations": [15],
    },
    # 400 first: the published best on ASOS, and the value kept when the budget stops tuning.
    "ease": {"lambda": [400, 200, 800, 100]},
}
ALS_TRIALS = 27
DEFAULTS: dict[str, dict[str, float | int]] = {
    "item_knn": {"k": 100},
    "als": {"factors": 128, "regularization": 0.5, "alpha": 20.0, "iterations": 15},
    "ease": {"lambda": 400},
    # EASE's lambda, over each item's 300 strongest co-purchase partners: what the item-item
    # source fits when the dense matrix does not fit memory, scored beside dense EASE
    "ease_local": {"lambda": 400, "support": 300},
}
# Cholesky + inverse throughput (n^3 flops a fit) on 2 cores, float32 through scipy's OpenBLAS:
# 1.7e11 measured at ASOS size (29.7k items, 153 s), taken at 60% for slower machines of the kind;
# used to skip EASE trials that would blow the tuning budget before starting them.
EASE_FLOPS_PER_S = 1.0e11


def evaluate(
    settings: Settings,
    holdout: Path | None = None,
    split: Split | None = None,
    test_fraction: float | None = None,
    k_max: int = 100,
    tune: bool = True,
    tune_budget_s: float = 600.0,
    seed: int = 0,
    models: tuple[str, ...] | None = None,
    ease_memory_gb: float | None = None,
    progress: Callable[[str], None] | None = None,
    serve: bool = True,
) -> dict[str, Any]:
    """Fit, tune and score every peer; write JSON + Markdown under ``reports/evaluation``.

    ``tune_budget_s`` caps the tuning time of each model (trials run in grid order until the
    budget is spent; EASE trials whose estimated time does not fit are skipped up front).
    """
    say = progress or log.info
    started = time.perf_counter()
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    ks = tuple(k for k in (10, 20, 100) if k <= k_max) or (k_max,)
    map_ks = tuple(k for k in (12,) if k <= k_max)
    curve = curve_ks(k_max)
    train, test, protocol = _split(settings, holdout, split, test_fraction)
    protocol |= {"ks": list(ks), "map_ks": list(map_ks), "curve_ks": list(curve), "k_max": k_max,
                 "cold_threshold": COLD_THRESHOLD}  # fmt: skip

    data = InteractionMatrix.from_frame(train)
    n_users, n_items = data.shape
    train_counts_user = np.asarray((data.matrix > 0).sum(axis=1)).ravel()
    item_counts = np.asarray((data.matrix > 0).sum(axis=0)).ravel()
    seen = train.groupby("user_id")["item_id"].agg(set).to_dict()
    truth_all = test.groupby("user_id")["item_id"].agg(set).to_dict()
    truth = {u: rel - seen.get(u, set()) for u, rel in truth_all.items()}
    truth = {u: rel for u, rel in sorted(truth.items()) if rel}
    if not truth:
        raise ValueError("the test set has no (user, item) pair the user did not already have")
    eval_users = list(truth)
    warm = [u for u in eval_users if u in data.user_index]
    cold = [u for u in eval_users if u not in data.user_index]
    warm_rows = np.array([data.user_index[u] for u in warm], dtype=np.int64)

    cold_user_truth = {u: rel for u, rel in truth.items() if u not in data.user_index
                       or train_counts_user[data.user_index[u]] <= COLD_THRESHOLD}  # fmt: skip
    item_count_of = dict(zip(data.item_ids.tolist(), item_counts.tolist(), strict=True))
    cold_item_truth = {u: {i for i in rel if item_count_of.get(i, 0) <= COLD_THRESHOLD}
                       for u, rel in truth.items()}  # fmt: skip
    cold_item_truth = {u: rel for u, rel in cold_item_truth.items() if rel}
    unreachable = sum(1 for rel in truth.values() for i in rel if i not in data.item_index)

    dataset = {
        "train_rows": len(train), "test_rows": len(test),
        "train_users": n_users, "train_items": n_items, "train_nnz": int(data.matrix.nnz),
        "test_users": len(truth_all), "eval_users": len(eval_users),
        "eval_pairs": sum(len(r) for r in truth.values()),
        "eval_pairs_item_not_in_train": unreachable,
        "cold_test_users": len(cold), "cold_user_segment_users": len(cold_user_truth),
        "cold_item_segment_users": len(cold_item_truth),
    }  # fmt: skip
    say(
        f"  train {n_users:,} users x {n_items:,} items ({data.matrix.nnz:,} pairs); "
        f"evaluating {len(eval_users):,} users ({len(cold):,} without training history)"
    )

    segments = {"overall": truth, "cold_users": cold_user_truth, "cold_items": cold_item_truth}
    decile_of = popularity_deciles(data.item_ids.tolist(), item_counts)
    popularity = _popularity_block(decile_of, item_count_of, truth)

    def scores(rankings: dict[str, list[str]], *names: str) -> dict[str, Any]:
        """Metrics (with the Recall/NDCG curve) of ``rankings`` on each segment of ``names``
        (default: all, plus the top-10 popularity-decile profile of the evaluated users), None
        for an empty segment: every model and the served pipeline are scored by this one
        function."""
        out: dict[str, Any] = {
            n: evaluate_with_curve(rankings, segments[n], ks, map_ks, n_items, curve)
            if segments[n] else None for n in names or segments
        }  # fmt: skip
        if not names:
            lists = (rankings.get(u, ()) for u in eval_users)
            out["popularity_deciles"] = decile_shares(lists, decile_of, BIAS_K)
        return out

    val_matrix, val_rows, val_truth = _validation_slice(data.matrix, seed)
    protocol["tuning"] = {
        "enabled": tune, "metric": TUNE_METRIC, "validation_users": len(val_rows),
        "grids": GRIDS, "als_trials": ALS_TRIALS, "budget_s_per_model": tune_budget_s,
        "selection": "validation slice from training data: one random training item held out "
                     "per user with >= 2 items; refit on all training data",
    }  # fmt: skip

    popular = Popularity().fit(data.matrix)
    cold_ranking = popular.recommend(np.array([0]), k_max, exclude_seen=False)[0]
    cold_ranking_ids = data.item_ids[cold_ranking].tolist()
    item_cols = train["item_id"].map(data.item_index).to_numpy(np.int64)
    timestamps = train["timestamp"].to_numpy()
    ease_gb = ease_memory_gb if ease_memory_gb is not None else _default_ease_memory_gb()

    factories: dict[str, Callable[[dict[str, Any]], BaselineModel]] = {
        "popularity": lambda p: Popularity(),
        "popularity_recent": lambda p: RecentPopularity(settings.evaluation.recent_popularity_days),
        "item_knn": lambda p: ItemKNN(int(p["k"])),
        "als": lambda p: ALS(**p, random_state=seed),  # the grid keys are ALS arguments
        "ease": lambda p: EASE(float(p["lambda"]), memory_gb=ease_gb),
        "ease_local": lambda p: LocalEASE(float(p["lambda"]), int(p["support"])),
    }
    names = models or tuple(factories)
    unknown = set(names) - set(factories)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {sorted(factories)}")

    def fit(name: str, model: BaselineModel, matrix: sp.csr_matrix) -> BaselineModel:
        if name == "popularity_recent":
            assert isinstance(model, RecentPopularity)
            # the validation slice drops single pairs; recent counts use every training event
            return model.fit(matrix, item_cols, timestamps)
        return model.fit(matrix)

    results: dict[str, Any] = {}
    report_dir = settings.reports_dir / "evaluation"
    for name in names:
        say(f"  {name}: " + ("tuning" if tune and name in GRIDS else "fitting"))
        trials: list[dict[str, Any]] = []
        note: str | None = None
        params: dict[str, Any] = dict(DEFAULTS.get(name, {}))
        try:
            if tune and name in GRIDS:
                candidates = _candidates(name, seed)
                if name == "ease":
                    estimate = _ease_seconds(n_items)
                    fits = int(tune_budget_s // max(estimate, 1e-9))
                    if fits < len(candidates):
                        note = (f"tuning budget {tune_budget_s:.0f}s allows {fits} of "
                                f"{len(candidates)} EASE fits (~{estimate:.0f}s each on "
                                f"{n_items:,} items)")  # fmt: skip
                        candidates = candidates[:fits]
                tune_started = time.perf_counter()
                for cand in candidates:
                    if time.perf_counter() - tune_started > tune_budget_s:
                        note = (note or "") + f" stopped after {len(trials)} trials (budget)"
                        break
                    t0 = time.perf_counter()
                    model = fit(name, factories[name](cand), val_matrix)
                    ranked = model.recommend(val_rows, 10)
                    val_rankings = dict(zip(val_rows.tolist(), ranked, strict=True))
                    score = evaluate_all(val_rankings, val_truth, ks=(10,), map_ks=())
                    trials.append({"params": cand, TUNE_METRIC: score[TUNE_METRIC],
                                   "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
                    say(f"    {cand} -> {TUNE_METRIC} {score[TUNE_METRIC]:.4f}")
                if trials:
                    params = max(trials, key=lambda t: t[TUNE_METRIC])["params"]
                else:
                    note = (note or "") + "; kept the default parameters"
            t0 = time.perf_counter()
            model = fit(name, factories[name](params), data.matrix)
            fit_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            ranked_rows = model.recommend(warm_rows, k_max)
            recommend_seconds = time.perf_counter() - t0
        except MemoryError as exc:
            log.warning("%s skipped: %s", name, exc)
            results[name] = {"error": str(exc), "params": params, "tuning": trials}
            continue
        rankings = dict(zip(warm, (data.item_ids[r].tolist() for r in ranked_rows), strict=True))
        rankings |= dict.fromkeys(cold, cold_ranking_ids)  # no history: popularity
        results[name] = {
            **scores(rankings),
            "params": params if name in GRIDS else model.params(),
            "tuning": trials,
            "tuning_note": note.strip("; ") if note else None,
            "fit_seconds": round(fit_seconds, 2),
            "recommend_seconds": round(recommend_seconds, 2),
        }
        o = results[name]["overall"]
        say(f"    {name}: recall@10 {o.get('recall@10', float('nan')):.4f} "
            f"(fit {fit_seconds:.1f}s)")  # fmt: skip
        del model
        write_report(report_dir, _result(dataset, protocol, results, started, popularity))

    served = _served(settings, protocol, eval_users, k_max, scores, say) if serve else None
    out = _result(dataset, protocol, results, started, popularity, served)
    write_report(report_dir, out)
    return out


def _served(
    settings: Settings,
    protocol: dict[str, Any],
    eval_users: list[str],
    k_max: int,
    scores: Callable[..., dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The served pipeline's block: metrics like a model's (``scores``), or why it was not
    evaluated."""
    run = served_run(settings)
    if run is None:
        return {"error": "no trained run with a ranker: run `recsys train` and `recsys index`"}
    data = run.manifest.get("data", {})
    run_cutoff = pd.Timestamp(data["cutoff"])
    if protocol["split"] == "temporal" and pd.Timestamp(protocol["cutoff"]) < run_cutoff:
        return {
            "error": f"run {run.id} trained on data up to {run_cutoff}, after this "
            f"split's cutoff {protocol['cutoff']}: it has seen test events. "
            "Evaluate with the run's split (no --test-fraction) or retrain."
        }
    if protocol["split"] == "holdout" and "(holdout" not in str(data.get("evaluation", "")):
        return {
            "error": f"run {run.id} was trained with a temporal split, not this "
            "holdout: retrain after importing the holdout"
        }
    say("  served pipeline: the API's candidates, ranker and rules, per test user")
    try:
        rankings, info = evaluate_served(settings, eval_users, k_max, run_cutoff, say)
    except Exception as exc:  # the peers' results stay useful: report, do not crash
        log.exception("served pipeline evaluation failed")
        return {"error": f"{type(exc).__name__}: {exc}"}
    per_source = info.pop("source_rankings")
    # each candidate source alone (its own order, same users): what the ranker adds over them
    sources = {name: scores({u: ranked.get(u, []) for u in eval_users}, "overall")["overall"]
               for name, ranked in per_source.items()}  # fmt: skip
    return {**scores(rankings), "sources_alone": sources, **info}


def _result(
    dataset: dict[str, Any],
    protocol: dict[str, Any],
    results: dict[str, Any],
    started: float,
    popularity: dict[str, Any],
    served: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The output document (also written after each model, so a long run leaves partials)."""
    return {
        "dataset": dataset,
        "protocol": protocol,
        "models": results,
        "served": served,
        "popularity": popularity,
        "seconds": round(time.perf_counter() - started, 1),
        "created_at": datetime.now(UTC).isoformat(),
    }


def _popularity_block(
    decile_of: dict[Any, int], count_of: dict[Any, int], truth: dict[str, set[str]]
) -> dict[str, Any]:
    """The reference of the popularity-bias plot: how the test purchases themselves spread over
    the training-popularity deciles (a model matching it is not biased, only accurate), and the
    training counts each decile spans (to read "D10" as "bought by 40-130 users")."""
    spans: list[list[int]] = [[] for _ in range(10)]
    for item, d in decile_of.items():
        spans[d].append(count_of[item])
    return {
        "k": BIAS_K,
        "definition": "items cut into 10 equal groups by training popularity (users who had "
        "the item; D1 least popular, D10 most); shares of top-k slots (models) or of test "
        "pairs (truth) in each; items absent from training count in D1",
        "item_count_range": [[min(c), max(c)] if c else None for c in spans],
        "truth": decile_shares(truth.values(), decile_of, k=None),
    }


# --------------------------------------------------------------------------- data and split
def _load(path: Path, event_type: str | None = None) -> pd.DataFrame:
    """The rows of ``path`` (only those of ``event_type`` when given: the signal events, so that
    tens of millions of views stay in the file), oldest first."""
    where = "" if event_type is None else f"WHERE event_type = {sql_str(event_type)}"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            f"""SELECT user_id, item_id, "timestamp", event_type
                FROM {parquet(path)} {where} ORDER BY "timestamp" """
        ).df()


def _split(
    settings: Settings, holdout: Path | None, split: Split | None, test_fraction: float | None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Holdout, else temporal: at the served run's cutoff (so that the served pipeline and the
    peers share one split) unless ``test_fraction`` is given, else at 10% of time."""
    path = table_path(settings.validated_dir, "interactions")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `recsys validate` first.")
    if split not in (None, "holdout", "temporal"):
        raise ValueError(f"--split must be 'holdout' or 'temporal', got {split!r}")
    signal = signal_event(settings, path)  # raises for a file without weighted events
    events = _load(path, signal)
    default_holdout = table_path(settings.validated_dir, "holdout")
    if split == "holdout" or (split is None and (holdout is not None or default_holdout.exists())):
        hpath = holdout or default_holdout
        if not hpath.exists():
            raise FileNotFoundError(
                f"holdout {hpath} is missing: pass --holdout FILE, or --split temporal"
            )
        test = _load(hpath)
        if (test["event_type"] == signal).any():
            test = test[test["event_type"] == signal]
        protocol = {"split": "holdout", "holdout": str(hpath), "cutoff": None,
                    "test_fraction": None}  # fmt: skip
        train = events
    else:
        found = served_run(settings) if test_fraction is None else None
        if found is not None:
            cutoff = pd.Timestamp(found.manifest["data"]["cutoff"])
        else:
            test_fraction = test_fraction or DEFAULT_TEST_FRACTION
            cutoff = events["timestamp"].quantile(1 - test_fraction)
        train = events[events["timestamp"] < cutoff]
        test = events[events["timestamp"] >= cutoff]
        if train.empty or test.empty:
            raise ValueError(
                f"{path}: timestamps do not vary enough for a temporal split at "
                f"{cutoff}; import a holdout (--holdout FILE) instead"
            )
        protocol = {"split": "temporal", "holdout": None, "cutoff": str(cutoff),
                    "test_fraction": test_fraction}  # fmt: skip
    protocol["events"] = signal
    return train.reset_index(drop=True), test.reset_index(drop=True), protocol


def _validation_slice(
    matrix: sp.csr_matrix, seed: int
) -> tuple[sp.csr_matrix, np.ndarray, dict[int, set[int]]]:
    """Training matrix minus one random item of each user with >= 2 items (capped users)."""
    rng = np.random.default_rng(seed)
    m = matrix.tocsr(copy=True)
    counts = np.diff(m.indptr)
    users = np.flatnonzero(counts >= 2)
    if len(users) > MAX_VALIDATION_USERS:
        users = np.sort(rng.choice(users, MAX_VALIDATION_USERS, replace=False))
    picks = m.indptr[users] + (rng.random(len(users)) * counts[users]).astype(np.int64)
    truth = {int(u): {int(m.indices[p])} for u, p in zip(users, picks, strict=True)}
    m.data[picks] = 0
    m.eliminate_zeros()
    return m, users, truth


def _candidates(name: str, seed: int) -> list[dict[str, Any]]:
    grid = GRIDS[name]
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if name == "als" and len(points) > ALS_TRIALS:
        points = random.Random(seed).sample(points, ALS_TRIALS)
    return points


def _ease_seconds(n_items: int) -> float:
    return n_items**3 / EASE_FLOPS_PER_S


def _default_ease_memory_gb() -> float:
    """Half the machine's available memory: the rest is for the sparse data and scoring."""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2 / 2
    return 8.0


# --------------------------------------------------------------------------- report
def write_report(out_dir: Path, result: dict[str, Any]) -> Path:
    """``evaluation.json``, ``report.md``, ``report.html`` and (with matplotlib)
    ``recall_at_k.png``; returns the Markdown report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2, default=str))
    columns = metric_columns(result["protocol"]["ks"])
    lines = [
        "# Offline evaluation",
        "",
        f"Split: **{result['protocol']['split']}**, events: {result['protocol']['events']}, "
        f"{result['dataset']['eval_users']:,} users evaluated "
        f"({result['dataset']['cold_test_users']:,} without training history, ranked by "
        "popularity). Truth excludes each user's training items. Parameters tuned on a "
        "validation slice of the training data by Recall@10.",
        "",
        "| model | " + " | ".join(columns) + " | params | fit s |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for name, m in rows(result).items():
        if "overall" not in m:
            lines.append(f"| {name} | {m.get('error', 'failed')} |")
            continue
        lines.append(f"| {name} | {_cells(m['overall'], columns)} | {m.get('params', '-')} | "
                     f"{m.get('fit_seconds', '-')} |")  # fmt: skip
    for seg in ("cold_users", "cold_items"):
        lines += ["", f"## Segment: {seg.replace('_', ' ')}", "",
                  "| model | users | recall@10 | ndcg@10 |", "|---|---|---|---|"]  # fmt: skip
        for name, m in rows(result).items():
            s = m.get(seg)
            if s:
                lines.append(f"| {name} | {s['users']} | {_cells(s, TOP10)} |")
    served = result.get("served") or {}
    if served.get("sources_alone"):
        lines += ["", "## Served pipeline: each candidate source alone vs the ranker", "",
                  "Same users; a source alone ranks its own candidates by its own score.", "",
                  "| source | recall@10 | ndcg@10 |", "|---|---|---|"]  # fmt: skip
        for name, o in {**served["sources_alone"], "ranker + rules": served["overall"]}.items():
            lines.append(f"| {name} | {_cells(o, TOP10)} |")
    lines += ["", "## Recall@K", ""]
    if recall_png(out_dir / "recall_at_k.png", result):
        lines.append("![Recall@K per model](recall_at_k.png)")
    else:
        lines.append("(matplotlib is not installed: no plot; the table above has Recall@K.)")
    lines += ["", "## Tuning", ""]
    for name, m in result["models"].items():
        if m.get("tuning"):
            lines.append(
                f"- **{name}**: chosen {m['params']} from "
                + ", ".join(f"{t['params']}={t[TUNE_METRIC]:.4f}" for t in m["tuning"])
            )
        if m.get("tuning_note"):
            lines.append(f"- {name}: {m['tuning_note']}")
    lines += ["", "The full report, with every plot: [report.html](report.html)."]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_html_report(out_dir, result)
    return report


def _cells(metrics: dict[str, float], columns: Sequence[str]) -> str:
    """Markdown cells of ``columns`` (NaN where a metric is missing)."""
    return " | ".join(f"{metrics.get(c, float('nan')):.4f}" for c in columns)
