"""Fit the served pipeline's candidate sources and its LightGBM ranker (part of ``recsys train``).

Protocol (the ranker must learn on rows that look like serving rows, without peeking):

1. **Label slice.** From the training purchases, one purchase per user with at least two
   (their latest, or a random one when the data has no order) is held out as the ranker's
   label, for as many users as ``label_users`` and ``label_share`` allow: the ranker learns
   only from users whose label some source reaches (~13% on ASOS), so it needs them all.
   The two-tower model is trained without these pairs too (``pipelines/train.py``).
2. **Sources.** Every source is fitted once on all training purchases: what serving uses.
   The rows' sources are the same without the label slice
   (:meth:`~models.candidates.CandidateGenerator.held_out`): association rules, ALS, segment
   popularity and item demand counts are fitted again on the rest (cheap); EASE, whose dense
   inverse was half of ``recsys train`` when it was fitted twice, answers each label user from
   the one fit with their own held-out purchase taken out exactly
   (:class:`~models.item_item.HeldOutEase`; the other users' labels stay in, as every
   purchase but the visitor's next one is in the served model).
3. **Rows.** Every label user goes through :class:`~models.candidates.CandidateGenerator`
   (the code the API runs) with user features from Feast's ``get_historical_features`` as of
   the cutoff; a candidate is positive when it is the held-out purchase.
4. **Ranker.** LightGBM (``ranking.objective``, fixed rounds) on 90% of the label users; the
   other 10% compare it with each source alone (``valid_ndcg@10_vs_sources``).
5. **Save.** The sources fitted on everything and the ranker (the usual two-stage practice:
   the features mean the same thing at serving time).

What it saves in the run (through :class:`~recsys.core.run.Run`): each source's tables, the
catalogue with its demand counts and the ranker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from models.candidates import CandidateGenerator, own_order
from models.context import NO_FILTERS, ItemFilters, UserContext
from models.metrics import ndcg_at_k
from models.ranker import Ranker
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.terminal import track
from recsys.core.vocab import Vocabulary

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- label slice
def carve_labels(
    purchases: pd.DataFrame, max_users: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(purchases minus the label pairs, labels(user_id, item_id)).

    Users with at least two distinct items are eligible (one must stay as history). The label
    is the latest purchase when timestamps vary, else a random one.
    """
    rng = np.random.default_rng(seed)
    distinct = purchases.drop_duplicates(["user_id", "item_id"])
    counts = distinct.groupby("user_id").size()
    eligible = np.sort(counts.index[counts >= 2].to_numpy())
    if len(eligible) > max_users:
        eligible = np.sort(rng.choice(eligible, max_users, replace=False))
    pool = distinct[distinct["user_id"].isin(set(eligible.tolist()))].copy()
    pool["_r"] = rng.random(len(pool))
    dated = purchases["timestamp"].nunique() > 1
    keys = ["user_id", "timestamp", "_r"] if dated else ["user_id", "_r"]
    labels = pool.sort_values(keys, kind="stable").groupby("user_id").tail(1)
    labels = labels[["user_id", "item_id"]].sort_values("user_id", ignore_index=True)
    marked = purchases.merge(labels.assign(_label=True), on=["user_id", "item_id"], how="left")
    fit = purchases[marked["_label"].isna().to_numpy()].reset_index(drop=True)
    return fit, labels


# --------------------------------------------------------------------------- ranker rows
#: Scores a source may hold for the coming cases at once (float32 cells): ~32 MB a source.
PRIME_CELLS = 1 << 23


def prime_chunk(n_items: int) -> int:
    """Cases primed together: as many as fit :data:`PRIME_CELLS` dense score rows, 16-1024."""
    return int(np.clip(PRIME_CELLS // max(n_items, 1), 16, 1024))


def training_rows(
    generator: CandidateGenerator,
    cases: list[tuple[UserContext, set[str]]],
    filters: ItemFilters = NO_FILTERS,
    unit: str = "user",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """(features, labels, group sizes, stats) over the cases (a visitor and the items that
    are their label) whose label is among the candidates."""
    blocks, ys, groups = [], [], []  # of the cases whose label is among their candidates
    candidates = 0
    contexts = [ctx for ctx, _ in cases]
    chunk = prime_chunk(generator.catalog.n_items)
    for i, (ctx, label) in enumerate(track(cases, "ranker rows", unit=f"{unit}s")):
        if i % chunk == 0:
            generator.prime(contexts[i : i + chunk])
        cand = generator.generate(ctx, filters)
        truth = generator.catalog.indices(sorted(label))
        y = np.isin(cand.items, truth).astype(np.float32)
        candidates += len(cand)
        if y.sum() > 0:
            blocks.append(cand.features)
            ys.append(y)
            groups.append(len(y))
    generator.prime([])  # let go of the last chunk's scores
    total = len(contexts)
    stats = {"users": total, "label_in_candidates": len(groups) / max(total, 1),
             "mean_candidates": candidates / max(total, 1)}  # fmt: skip
    if not blocks:
        empty = np.empty((0, len(generator.features)), dtype=np.float32)
        return empty, np.empty(0, np.float32), np.empty(0, np.int64), stats
    return np.concatenate(blocks), np.concatenate(ys), np.asarray(groups, np.int64), stats


def compare_on_validation(
    ranker: Ranker, generator: CandidateGenerator, x: np.ndarray, y: np.ndarray, groups: np.ndarray
) -> dict[str, float]:
    """NDCG@10 on the validation users of the ranker and of each source alone (its own
    candidates in its own order): the ranker earns its place only if it beats them all."""
    scores = ranker.predict(x)
    totals = {"ranker": 0.0}
    start = 0
    for size in groups.tolist():
        block = slice(start, start + size)
        relevant = set(np.flatnonzero(y[block]).tolist())
        orders = {"ranker": np.argsort(-scores[block], kind="stable")}
        orders |= {s.name: own_order(s, x[block], generator.features) for s in generator.sources}
        for name, order in orders.items():
            totals[name] = totals.get(name, 0.0) + ndcg_at_k(order.tolist(), relevant, 10)
        start += size
    return {name: round(total / max(len(groups), 1), 5) for name, total in totals.items()}


def histories(purchases: pd.DataFrame) -> dict[str, list[str]]:
    """Each user's distinct purchased items, newest first (item id breaks ties)."""
    ordered = purchases.sort_values(
        ["user_id", "timestamp", "item_id"], ascending=[True, False, True], kind="stable"
    ).drop_duplicates(["user_id", "item_id"])
    return {u: g.tolist() for u, g in ordered.groupby("user_id", sort=False)["item_id"]}


def fit_ranker(
    settings: Settings,
    generator: CandidateGenerator,
    cases: list[tuple[UserContext, set[str]]],
    progress: Any,
    unit: str,
    more: str,
    filters: ItemFilters = NO_FILTERS,
    negative_share: float = 1.0,
) -> tuple[Ranker, dict[str, Any]]:
    """The ranker on the rows of 90% of ``cases`` (a visitor, their label items), compared with
    each source alone on the other 10%: (ranker, row statistics). ``unit``: what a case is (for
    messages); ``more``: the setting that gives more cases when too few reach a candidate;
    ``negative_share``: the share of non-label training rows kept (:func:`sample_negatives`)."""
    cfg = settings.ranking
    rng = np.random.default_rng(settings.train.seed)
    is_valid = rng.random(len(cases)) < 0.1
    t0 = time.perf_counter()
    x, y, groups, stats = training_rows(
        generator, [c for c, v in zip(cases, is_valid, strict=True) if not v], filters, unit
    )
    valid_rows = training_rows(
        generator, [c for c, v in zip(cases, is_valid, strict=True) if v], filters, unit
    )
    progress(f"  ranker rows: {len(cases):,} label {unit}s, label among candidates for "
             f"{stats['label_in_candidates']:.1%}, {stats['mean_candidates']:.0f} candidates "
             f"per {unit} ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    if len(groups) < 10 or len(valid_rows[2]) < 2:
        raise ValueError(
            f"too few label {unit}s reach the candidates ({len(groups)}): the ranker cannot be "
            f"trained; generate more data or raise {more}"
        )
    all_rows = len(y)
    if negative_share < 1.0:
        x, y, groups = sample_negatives(x, y, groups, negative_share, rng)
    ranker = Ranker.fit(x, y, groups, list(generator.features), valid=valid_rows[:3],
                        rounds=cfg.rounds, seed=settings.train.seed,
                        params={"objective": cfg.objective})  # fmt: skip
    compared = compare_on_validation(ranker, generator, *valid_rows[:3])
    ranker.info["valid_ndcg@10_vs_sources"] = compared
    progress("  ranker: " + f"{ranker.info['rounds']} rounds; validation NDCG@10 " + ", ".join(
        f"{name} {value:.4f}" for name, value in compared.items()))  # fmt: skip
    return ranker, stats | {"train_rows": int(len(y)), "rows_before_sampling": int(all_rows),
                            "train_groups": int(len(groups)),
                            "valid_groups": int(len(valid_rows[2]))}  # fmt: skip


def sample_negatives(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every label row and ``share`` of the others, drawn at random, groups kept in order.

    With one label among ~170 candidates, the rows are nearly all negatives: the binary loss
    learns the same order from a sample of them (only its calibration moves, which ranking does
    not use) at a fraction of LightGBM's time. On the demo shop's session ranker: validation
    NDCG@10 0.4958 with every row (2.57M, 12.6 s), 0.4963 with half (6.2 s)."""
    keep = (y > 0) | (rng.random(len(y)) < share)
    group_of = np.repeat(np.arange(len(groups)), groups)
    kept = np.bincount(group_of[keep], minlength=len(groups))
    return x[keep], y[keep], kept[kept > 0].astype(np.int64)


def fit_ranking(
    settings: Settings,
    fit_purchases: pd.DataFrame,
    all_purchases: pd.DataFrame,
    labels: pd.DataFrame,
    vocab: Vocabulary,
    catalog: pd.DataFrame,
    user_features: pd.DataFrame,
    user_vectors_of: Any,
    item_vectors: np.ndarray,
    as_of: pd.Timestamp,
    run: Run,
    progress: Any = print,
) -> dict[str, Any]:
    """Steps 2-5 of the module docstring; returns the ranking block of the run manifest.

    ``as_of``: the cutoff; recency windows of popularity and demand end there.
    ``user_features``: Feast rows (user_id + user_features columns) as of the cutoff.
    ``user_vectors_of(frame)``: two-tower user vectors for rows shaped like ``user_features``.
    ``item_vectors``: the run's item vectors (row = item index).
    """
    started = time.perf_counter()
    segments = user_features[["user_id", "age_bucket"]] if "age_bucket" in user_features else None

    final = CandidateGenerator.fit(settings, vocab, all_purchases, catalog, segments, as_of,
                                   item_vectors, derive_held_out=True)  # fmt: skip
    progress(f"  sources on all {len(all_purchases):,} training purchases: {final.describe()} "
             f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
    t0 = time.perf_counter()
    generator = final.held_out(settings, vocab, fit_purchases, labels, catalog, segments, as_of,
                               item_vectors)  # fmt: skip
    progress(f"  ranker sources without the {len(labels):,} labels: {generator.describe()} "
             f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip

    truth = labels.groupby("user_id")["item_id"].agg(set).to_dict()
    history = histories(fit_purchases)
    users = sorted(u for u in truth if u in history)
    feats = user_features.drop_duplicates("user_id").set_index("user_id").reindex(users)
    feats = feats.rename_axis("user_id").reset_index()
    feats["purchased_items"] = [history[u] for u in users]
    vectors = user_vectors_of(feats)
    records = feats.to_dict("records")
    contexts = [UserContext(u, history[u], (), rec, vector)
                for u, rec, vector in zip(users, records, vectors, strict=True)]  # fmt: skip
    ranker, stats = fit_ranker(
        settings, generator, [(c, truth[c.user_id]) for c in contexts], progress, "user",
        "RECSYS_RANKING__LABEL_USERS",
    )  # fmt: skip

    del generator  # with it goes EASE's dense matrix, before what follows needs memory
    final.save(run)
    ranker.save(run)
    return {
        "features": list(final.features),
        "label_users": len(contexts),
        "rows": stats,
        "ranker": ranker.info,
        "sources": {s.name: s.summary() for s in final.sources},
        "seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip
