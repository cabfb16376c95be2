"""Fit the served pipeline's candidate sources and its LightGBM ranker (part of ``recsys train``).

Protocol (the ranker must learn on rows that look like serving rows, without peeking):

1. **Label slice.** From the training purchases, one purchase per user with at least two
   (their latest, or a random one when the data has no order) is held out as the ranker's
   label, for as many users as ``label_users`` and ``label_share`` allow: the ranker learns
   only from users whose label some source reaches (~13% on ASOS), so it needs them all.
   The two-tower model is trained without these pairs too (``pipelines/train.py``).
2. **Sources on the rest.** EASE neighbours, association rules, segment popularity and item
   demand counts are fitted on the training purchases minus the label slice.
3. **Rows.** Every label user goes through :class:`~models.candidates.CandidateGenerator`
   (the code the API runs) with user features from Feast's ``get_historical_features`` as of
   the cutoff; a candidate is positive when it is the held-out purchase.
4. **Ranker.** LightGBM (``ranking.objective``, fixed rounds) on 90% of the label users; the
   other 10% compare it with each source alone (``valid_ndcg@10_vs_sources``).
5. **Refit.** The sources are fitted again on all training purchases for serving; the ranker
   keeps its weights (the usual two-stage practice: the features mean the same thing).

Artifacts in the run folder: ``item_neighbours.parquet``, ``bought_together.parquet``,
``popular_segments.parquet``, ``item_catalog.parquet`` and ``ranker.txt``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.association_rules import BoughtTogether, load_rules, mine_rules, save_rules
from models.baselines import InteractionMatrix
from models.candidates import (
    FEATURES,
    SOURCE_ORDER,
    CandidateGenerator,
    ItemCatalog,
    ItemFilters,
    SourceLimits,
    UserContext,
    VectorSearch,
    source_order,
)
from models.item_item import ItemNeighbors
from models.metrics import ndcg_at_k
from models.popularity import PopularityTable, segment_popularity
from models.ranker import Ranker
from recsys.config import Settings

log = logging.getLogger(__name__)

NEIGHBOURS_FILE = "item_neighbours.parquet"
RULES_FILE = "bought_together.parquet"
POPULAR_FILE = "popular_segments.parquet"
CATALOG_FILE = "item_catalog.parquet"
RANKER_FILE = "ranker.txt"
ITEM_VECTORS_FILE = "item_vectors.safetensors"
PAD = "\x00pad"  # column 0 of the source matrices: the vocabulary's "unknown item"
RECENT_DAYS = 7
CATALOG_COLUMNS = ("item_id", "title", "category", "colour", "department", "price", "in_stock")


@dataclass
class Sources:
    """Everything the candidate generator needs besides the two-tower model."""

    neighbours: ItemNeighbors
    rules: pd.DataFrame
    popular: pd.DataFrame
    catalog: pd.DataFrame  # CATALOG_COLUMNS + count, recent_count

    def generator(
        self,
        vocab: list[str],
        settings: Settings,
        vector_search: VectorSearch | None,
        item_vectors: np.ndarray | None = None,
    ) -> CandidateGenerator:
        return CandidateGenerator(
            ItemCatalog.from_frame(vocab, self.catalog),
            self.neighbours,
            BoughtTogether.from_frame(self.rules),
            PopularityTable.from_frame(self.popular),
            vector_search,
            source_limits(settings),
            item_vectors,
        )

    def save(self, run_dir: Path) -> None:
        self.neighbours.save(run_dir / NEIGHBOURS_FILE)
        save_rules(self.rules, run_dir / RULES_FILE)
        self.popular.to_parquet(run_dir / POPULAR_FILE, index=False)
        self.catalog.to_parquet(run_dir / CATALOG_FILE, index=False)

    @classmethod
    def load(cls, run_dir: Path) -> Sources:
        return cls(
            ItemNeighbors.load(run_dir / NEIGHBOURS_FILE),
            load_rules(run_dir / RULES_FILE),
            pd.read_parquet(run_dir / POPULAR_FILE),
            pd.read_parquet(run_dir / CATALOG_FILE),
        )


def source_limits(settings: Settings) -> SourceLimits:
    r = settings.ranking
    return SourceLimits(
        item_item=r.candidates_item_item,
        two_tower=r.candidates_two_tower,
        bought_together=r.candidates_bought_together,
        popular=r.candidates_popular,
        popular_window=r.popular_window,
    )


def has_ranking(run_dir: Path) -> bool:
    return (run_dir / RANKER_FILE).exists()


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


# --------------------------------------------------------------------------- sources
def fit_sources(
    settings: Settings,
    purchases: pd.DataFrame,
    vocab: list[str],
    catalog: pd.DataFrame,
    user_segments: pd.DataFrame | None,
    end: pd.Timestamp,
) -> Sources:
    """Fit every candidate source on ``purchases`` (user_id, item_id, timestamp)."""
    cfg = settings.ranking
    matrix = InteractionMatrix.from_frame(purchases, item_ids=[PAD, *vocab]).matrix
    neighbours = ItemNeighbors.fit(
        matrix, cfg.item_item, cfg.neighbours, cfg.ease_lambda, cfg.ease_memory_gb
    )
    rules = mine_rules(
        purchases, min_pair_baskets=cfg.rules_min_pair_baskets, top_n=cfg.rules_per_item
    )
    items = catalog[["item_id", "category"]]
    popular = segment_popularity(purchases, items, user_segments, end=end)
    counts = purchases.groupby("item_id").size().rename("count")
    recent = purchases[purchases["timestamp"] >= end - pd.Timedelta(days=RECENT_DAYS)]
    recent_counts = recent.groupby("item_id").size().rename("recent_count")
    frame = catalog[[c for c in CATALOG_COLUMNS if c in catalog]].drop_duplicates("item_id")
    frame = frame.merge(counts, on="item_id", how="left").merge(
        recent_counts, on="item_id", how="left"
    )
    frame[["count", "recent_count"]] = frame[["count", "recent_count"]].fillna(0)
    return Sources(neighbours, rules, popular, frame)


def exact_search(item_vectors: np.ndarray, catalog: ItemCatalog) -> VectorSearch:
    """Brute-force top-k over all item vectors (row = vocabulary index, row 0 zeros).

    Used to build the ranker's training rows in batch; serving asks the vector store the same
    question through HNSW.
    """

    def search(
        vector: np.ndarray, k: int, filters: ItemFilters, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = item_vectors @ vector
        scores[0] = -np.inf
        scores[exclude] = -np.inf
        allowed = catalog.allowed(filters)
        if allowed is not None:
            scores[~allowed] = -np.inf
        k = min(k, len(scores) - 1)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        return top.astype(np.int64), scores[top].astype(np.float64)

    return search


# --------------------------------------------------------------------------- ranker rows
def training_rows(
    generator: CandidateGenerator, contexts: list[UserContext], labels: dict[str, set[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """(features, labels, group sizes, stats) over users whose label is among the candidates."""
    from tqdm import tqdm

    blocks, ys, groups = [], [], []
    reached = total = candidates = 0
    for ctx in tqdm(contexts, desc="ranker rows", unit="user", mininterval=5, leave=False):
        cand = generator.generate(ctx)
        truth = generator.catalog.indices(sorted(labels[ctx.user_id]))
        y = np.isin(cand.items, truth).astype(np.float32)
        total += 1
        candidates += len(cand)
        if y.sum() == 0:
            continue
        reached += 1
        blocks.append(cand.features)
        ys.append(y)
        groups.append(len(y))
    stats = {"users": total, "label_in_candidates": reached / max(total, 1),
             "mean_candidates": candidates / max(total, 1)}  # fmt: skip
    if not blocks:
        empty = np.empty((0, len(FEATURES)), dtype=np.float32)
        return empty, np.empty(0, np.float32), np.empty(0, np.int64), stats
    return np.concatenate(blocks), np.concatenate(ys), np.asarray(groups, np.int64), stats


def compare_on_validation(
    ranker: Ranker, x: np.ndarray, y: np.ndarray, groups: np.ndarray
) -> dict[str, float]:
    """NDCG@10 on the validation users of the ranker and of each source alone (its own
    candidates in its own order): the ranker earns its place only if it beats them all."""
    scores = ranker.predict(x)
    orders: dict[str, list[np.ndarray]] = {"ranker": []}
    start = 0
    for size in groups.tolist():
        block = slice(start, start + size)
        orders["ranker"].append(np.argsort(-scores[block], kind="stable"))
        for source in SOURCE_ORDER:
            orders.setdefault(source, []).append(source_order(x[block], source))
        start += size
    out = {}
    for name, per_user in orders.items():
        start, total = 0, 0.0
        for size, order in zip(groups.tolist(), per_user, strict=True):
            relevant = set(np.flatnonzero(y[start : start + size]).tolist())
            total += ndcg_at_k(order.tolist(), relevant, 10)
            start += size
        out[name] = round(total / max(len(groups), 1), 5)
    return out


def histories(purchases: pd.DataFrame) -> dict[str, list[str]]:
    """Each user's distinct purchased items, newest first (item id breaks ties)."""
    ordered = purchases.sort_values(
        ["user_id", "timestamp", "item_id"], ascending=[True, False, True], kind="stable"
    ).drop_duplicates(["user_id", "item_id"])
    return {u: g.tolist() for u, g in ordered.groupby("user_id", sort=False)["item_id"]}


def fit_ranking(
    settings: Settings,
    fit_purchases: pd.DataFrame,
    all_purchases: pd.DataFrame,
    labels: pd.DataFrame,
    vocab: list[str],
    catalog: pd.DataFrame,
    user_features: pd.DataFrame,
    user_vectors_of: Any,
    item_vectors: np.ndarray,
    as_of: pd.Timestamp,
    run_dir: Path,
    progress: Any = print,
) -> dict[str, Any]:
    """Steps 2-5 of the module docstring; returns the ranking block of the run manifest.

    ``as_of``: the cutoff; recency windows of popularity and demand end there.
    ``user_features``: Feast rows (user_id + user_features columns) as of the cutoff.
    ``user_vectors_of(frame)``: two-tower user vectors for rows shaped like ``user_features``.
    """
    cfg = settings.ranking
    started = time.perf_counter()
    segments = user_features[["user_id", "age_bucket"]] if "age_bucket" in user_features else None
    sources = fit_sources(settings, fit_purchases, vocab, catalog, segments, as_of)
    progress(f"  ranker sources on {len(fit_purchases):,} purchases: item-item "
             f"{sources.neighbours.method}, {len(sources.rules):,} rules "
             f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
    item_catalog = ItemCatalog.from_frame(vocab, sources.catalog)
    generator = sources.generator(
        vocab, settings, exact_search(item_vectors, item_catalog), item_vectors
    )

    truth = labels.groupby("user_id")["item_id"].agg(set).to_dict()
    history = histories(fit_purchases)
    users = sorted(u for u in truth if u in history)
    feats = user_features.drop_duplicates("user_id").set_index("user_id").reindex(users)
    feats = feats.rename_axis("user_id").reset_index()
    feats["purchased_items"] = [history[u] for u in users]
    vectors = user_vectors_of(feats)
    records = feats.to_dict("records")
    contexts = [
        UserContext(u, history[u], (), rec, vectors[i]) for i, (u, rec) in enumerate(
            zip(users, records, strict=True))
    ]  # fmt: skip
    rng = np.random.default_rng(settings.train.seed)
    is_valid = rng.random(len(contexts)) < 0.1
    t0 = time.perf_counter()
    pairs = list(zip(contexts, is_valid.tolist(), strict=True))
    train_rows = training_rows(generator, [c for c, v in pairs if not v], truth)
    valid_rows = training_rows(generator, [c for c, v in pairs if v], truth)
    x, y, groups, stats = train_rows
    progress(f"  ranker rows: {len(contexts):,} label users, label among candidates for "
             f"{stats['label_in_candidates']:.1%}, {stats['mean_candidates']:.0f} candidates "
             f"per user ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    if len(groups) < 10 or len(valid_rows[2]) < 2:
        raise ValueError(
            f"too few label users reach the candidates ({len(groups)}): the ranker cannot be "
            "trained; generate more data or raise RECSYS_RANKING__LABEL_USERS"
        )
    ranker = Ranker.fit(x, y, groups, list(FEATURES), valid=valid_rows[:3], rounds=cfg.rounds,
                        seed=settings.train.seed, params={"objective": cfg.objective})  # fmt: skip
    compared = compare_on_validation(ranker, *valid_rows[:3])
    ranker.info["valid_ndcg@10_vs_sources"] = compared
    progress("  ranker: " + f"{ranker.info['rounds']} rounds; validation NDCG@10 " + ", ".join(
        f"{name} {value:.4f}" for name, value in compared.items()))  # fmt: skip

    t0 = time.perf_counter()
    segments_all = segments
    final = fit_sources(settings, all_purchases, vocab, catalog, segments_all, as_of)
    final.save(run_dir)
    ranker.save(run_dir / RANKER_FILE)
    save_item_vectors(run_dir, item_vectors)
    progress(f"  sources refitted on all {len(all_purchases):,} training purchases "
             f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return {
        "features": list(FEATURES),
        "label_users": len(contexts),
        "rows": stats | {"train_rows": int(len(y)), "train_groups": int(len(groups)),
                         "valid_groups": int(len(valid_rows[2]))},
        "ranker": ranker.info,
        "item_item": {"method": final.neighbours.method, **final.neighbours.params},
        "rules": len(final.rules),
        "seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip


def save_item_vectors(run_dir: Path, vectors: np.ndarray) -> None:
    """Vocabulary-ordered item vectors (row 0 = unknown) for content similarity in serving."""
    from safetensors.numpy import save_file

    save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)},
              run_dir / ITEM_VECTORS_FILE)  # fmt: skip


def load_item_vectors(run_dir: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(run_dir / ITEM_VECTORS_FILE)["vectors"]


@torch.no_grad()
def padded_item_vectors(vectors: np.ndarray) -> np.ndarray:
    """Vocabulary-ordered item vectors with a zero row 0 (the unknown item)."""
    out = np.zeros((len(vectors) + 1, vectors.shape[1]), dtype=np.float32)
    out[1:] = vectors
    return out
