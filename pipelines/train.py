"""Train the two-tower model with Ray Train on a point-in-time-correct Feast training set.

Flow: purchases are split by time (the last ``test_days`` are held out); each training event
(``train.train_events``: purchases and views) before the cutoff becomes an example (user, item,
timestamp). DuckDB writes them, sorted, to a scratch Parquet file; Feast's
``get_historical_features`` reads their features ``train.example_chunk_rows`` at a time and each
chunk is encoded to arrays as it comes, so neither the interaction log nor the feature rows are
ever one pandas frame (H&M's 22M examples: see the README). The arrays go to disk;
:func:`pipelines.two_tower_fit.train_func` runs on each Ray Train worker (1 here, N on a
cluster) over its shard; rank 0's weights come back as a checkpoint. The run is then evaluated
on the held-out window against popularity and saved.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from models.encoding import (
    ItemEncoder,
    UserEncoder,
    history_indices,
    item_demand,
    user_numeric_raw,
)
from models.metrics import evaluate_rankings
from models.popularity import recommend_popular, top_items
from models.text_encoder import item_text
from models.two_tower import (
    ITEM_INPUTS,
    WEIGHTS,
    TwoTower,
    TwoTowerConfig,
    manifest_entry,
    save_two_tower,
    to_tensors,
)
from pipelines.embed import read_vectors
from pipelines.ranking import carve_labels, fit_ranking
from pipelines.session_training import fit_session_pipeline
from pipelines.two_tower_fit import fit_two_tower, train_func
from recsys.core.arrays import top_k
from recsys.core.catalog import item_frame, item_titles, load_item_attributes
from recsys.core.feast_store import historical_features, open_store
from recsys.core.ray_runtime import fit_torch, worker_threads
from recsys.core.run import Run
from recsys.core.schema import ITEM_NUMERIC, USER_NUMERIC, table_path
from recsys.core.settings import Settings
from recsys.core.signal import signal_event
from recsys.core.sql import connect_duckdb, parquet, sql_str
from recsys.core.terminal import track
from recsys.core.vocab import Vocabulary

log = logging.getLogger(__name__)
ARRAYS = "train_arrays.npz"
POSITIVES = "train_positives.parquet"
USER_FEATURE_REFS = [f"user_features:{c}" for c in (*USER_NUMERIC, "purchased_items")]
ITEM_FEATURE_REFS = [f"item_features:{c}" for c in ITEM_NUMERIC]
RANKING_USER_REFS = [*USER_FEATURE_REFS, "user_features:age_bucket"]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]


def load_events(settings: Settings, event_types: tuple[str, ...]) -> pd.DataFrame:
    """(user_id, item_id, timestamp, event_type) of the validated interactions, oldest first."""
    path = table_path(settings.validated_dir, "interactions")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `recsys validate` first.")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            f"""SELECT user_id, item_id, "timestamp", event_type FROM {parquet(path)}
                WHERE list_contains(?, event_type) ORDER BY "timestamp" """,
            [list(event_types)],
        ).df()


@dataclass
class TrainingSplit:
    """What the model trains on and what it is scored against.

    ``temporal``: the last ``test_days`` of purchases are held out. ``holdout``: the data set
    came with its own test pairs (``validated/holdout.parquet``, e.g. ASOS's validation file):
    everything else trains. ``undated``: all training events share one timestamp (ASOS has
    none), so there is no order to respect and each example's history is everything else.
    """

    mode: str
    train: pd.DataFrame  # purchases before the cutoff: the "already bought" of evaluation
    test: pd.DataFrame  # purchases to predict
    cutoff: pd.Timestamp  # user features for evaluation are read as of this time
    end: pd.Timestamp
    undated: bool

    def describe(self) -> str:
        what = f"{len(self.test):,} held-out purchases ({self.mode}"
        what += ", undated events: leave-one-out history)" if self.undated else ")"
        return f"{what}, {len(self.train):,} purchases before {self.cutoff:%Y-%m-%d %H:%M}"


def split_for_training(
    settings: Settings, purchases: pd.DataFrame, signal: str = "purchase"
) -> TrainingSplit:
    """``purchases``: the ``signal`` events (``EventSettings``), what is held out and scored."""
    cfg = settings.train
    holdout_path = table_path(settings.validated_dir, "holdout")
    end = purchases["timestamp"].max().floor("D") + pd.Timedelta(days=1)  # after the last day
    if holdout_path.exists():
        holdout = pd.read_parquet(holdout_path, columns=["user_id", "item_id", "event_type"])
        test = holdout[holdout["event_type"] == signal][["user_id", "item_id"]]
        undated = _distinct_timestamps(settings, cfg.train_events) == 1
        return TrainingSplit("holdout", purchases, test, end, end, undated)
    cutoff = end - pd.Timedelta(days=cfg.test_days)  # the held-out window is [cutoff, end)
    train = purchases[purchases["timestamp"] < cutoff]
    test = purchases[purchases["timestamp"] >= cutoff]
    if len(train) < 10 or test.empty:
        raise ValueError(
            f"not enough purchases to train and evaluate: {len(train)} before {cutoff}, "
            f"{len(test)} after. Generate more data or lower RECSYS_TRAIN__TEST_DAYS."
        )
    return TrainingSplit("temporal", train, test, cutoff, end, False)


def _distinct_timestamps(settings: Settings, event_types: tuple[str, ...]) -> int:
    """How many distinct timestamps the ``event_types`` events have (1: undated data)."""
    path = table_path(settings.validated_dir, "interactions")
    with duckdb.connect() as con:
        return con.execute(
            f"""SELECT count(DISTINCT "timestamp") FROM {parquet(path)}
                WHERE list_contains(?, event_type)""",
            [list(event_types)],
        ).fetchone()[0]


def write_positives(
    settings: Settings,
    split: TrainingSplit,
    path: Path,
    exclude: pd.DataFrame | None = None,
    cold_items: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Write the two-tower's positives to ``path``: the ``train.train_events`` events (before
    the cutoff of a temporal split), less the (user, item) pairs of ``exclude`` (the ranker's
    labels) and the ``cold_items``, ordered by (timestamp, user, item). DuckDB streams them
    from the validated interactions into Parquet, spilling beyond the features' memory limit,
    so tens of millions of views never become one pandas frame. Returns rows per event type.
    """
    source = table_path(settings.validated_dir, "interactions")
    types = ", ".join(sql_str(t) for t in settings.train.train_events)
    where = [f"event_type IN ({types})"]
    if split.mode == "temporal":
        cutoff = sql_str(split.cutoff.isoformat())
        where.append(f'CAST("timestamp" AS TIMESTAMPTZ) < CAST({cutoff} AS TIMESTAMPTZ)')
    with tempfile.TemporaryDirectory(prefix="recsys-positives-") as spill:
        con = connect_duckdb(settings.features.duckdb_memory_limit, Path(spill))
        try:
            if cold_items:
                con.register("cold", pd.DataFrame({"item_id": sorted(cold_items)}))
                where.append("item_id NOT IN (SELECT item_id FROM cold)")
            if exclude is not None and len(exclude):
                con.register("excluded", exclude[["user_id", "item_id"]])
                where.append("NOT EXISTS (SELECT 1 FROM excluded x "
                             "WHERE x.user_id = i.user_id AND x.item_id = i.item_id)")  # fmt: skip
            con.execute(
                f"""COPY (SELECT user_id, item_id, "timestamp", event_type
                          FROM {parquet(source)} i WHERE {" AND ".join(where)}
                          ORDER BY "timestamp", user_id, item_id)
                    TO {sql_str(path)} (FORMAT parquet)"""
            )
            counts = con.execute(
                f"SELECT event_type, count(*) FROM {parquet(path)} GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        finally:
            con.close()
    return {str(kind): int(n) for kind, n in counts}


def positive_users(path: Path) -> list[str]:
    """The users of the positives file (sorted): the user vocabulary of the run."""
    with duckdb.connect() as con:
        users = con.execute(f"SELECT DISTINCT user_id FROM {parquet(path)}").fetchall()
    return sorted(str(u) for (u,) in users)


def training_examples(
    store, split: TrainingSplit, positives: Path, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """The two-tower's training rows, ``chunk_rows`` at a time: each positive of the
    :func:`write_positives` file with its point-in-time Feast features (the
    ``two_tower_training`` service), in a fixed order.

    Undated data (``split.undated``) has no order to respect: every example reads the user as
    of the data's end and its history is everything bought except the example's own item.
    """
    service = store.get_feature_service("two_tower_training")
    source = pq.ParquetFile(positives)
    total = math.ceil(source.metadata.num_rows / chunk_rows)
    batches = source.iter_batches(
        batch_size=chunk_rows, columns=["user_id", "item_id", "timestamp"]
    )
    for batch in track(batches, "training examples from Feast", total, "chunks", total > 1):
        rows = batch.to_pandas()
        when = split.end if split.undated else rows["timestamp"]
        entity_df = rows[["user_id", "item_id"]].assign(event_timestamp=when)
        examples = historical_features(store, entity_df, service)
        # Feast/DuckDB return rows in no fixed order; training shuffles with a seeded
        # permutation, so fix the order first (the file is in this order already, so chunks
        # concatenate to one sorted table) or the same seed trains a different model each run.
        examples = examples.sort_values(
            ["event_timestamp", "user_id", "item_id"], kind="stable", ignore_index=True
        )
        if split.undated:
            examples["purchased_items"] = [
                [h for h in (history if history is not None else []) if h != item]
                for history, item in zip(
                    examples["purchased_items"], examples["item_id"], strict=True
                )
            ]
        yield examples


def catalog_frame(
    store, attributes: pd.DataFrame, item_ids: list[str], as_of: pd.Timestamp
) -> pd.DataFrame:
    """Catalogue rows in ``item_ids`` order with their demand features as of ``as_of``."""
    frame = item_frame(attributes, item_ids)
    entity_df = pd.DataFrame({"item_id": item_ids, "event_timestamp": as_of})
    demand = historical_features(store, entity_df, ITEM_FEATURE_REFS)[["item_id", *ITEM_NUMERIC]]
    return frame.merge(demand.drop_duplicates("item_id"), on="item_id", how="left")


@torch.no_grad()
def item_vectors(model: TwoTower, items: ItemEncoder, catalog: pd.DataFrame) -> np.ndarray:
    """L2-normalised vectors of ``catalog`` rows (vocabulary order, see :func:`catalog_frame`)
    by item index: row 0, the unknown item, is zeros."""
    encoded = to_tensors(items.encode(catalog))
    vectors = model.item_vectors({k: encoded[k] for k in ITEM_INPUTS}).numpy()
    out = np.zeros((len(vectors) + 1, vectors.shape[1]), dtype=np.float32)
    out[1:] = vectors
    return out


@torch.no_grad()
def user_vectors(
    model: TwoTower, users: UserEncoder, items: ItemEncoder, features: pd.DataFrame
) -> np.ndarray:
    return model.user_vectors(to_tensors(users.encode(features, items))).numpy()


def _top_k(
    scores: np.ndarray, item_ids: list[str], seen: list[set[str]], k: int
) -> list[list[str]]:
    """Each row's best ``k`` item ids, minus what that user already bought."""
    return [
        [item_ids[i] for i in top_k(row, k + len(bought)) if item_ids[i] not in bought][:k]
        for row, bought in zip(scores, seen, strict=True)
    ]


def train(settings: Settings, progress=print) -> TrainResult:
    """Build the Feast training set, fit through Ray Train, evaluate, save a run."""
    cfg = settings.train
    started = time.perf_counter()
    signal = signal_event(settings)  # purchases; views in a click-only shop
    purchases = load_events(settings, (signal,)).drop(columns="event_type")
    split = split_for_training(settings, purchases, signal)
    cutoff, end, train_rows, test_rows = split.cutoff, split.end, split.train, split.test
    if signal != "purchase":
        progress(f"  no purchases: the sources, labels and evaluation learn from {signal}s")
    progress(f"  evaluation: {split.describe()}")
    labels = None
    if settings.ranking.enabled:
        # each label is held out of the two-tower and of every source's answer for its user
        rk = settings.ranking
        n_labels = max(1, min(rk.label_users, int(rk.label_share * len(train_rows))))
        fit_purchases, labels = carve_labels(train_rows, n_labels, cfg.seed)
    cold_items = _pick_cold_items(test_rows, cfg.cold_item_fraction, cfg.seed)
    if cold_items:
        # an experiment, not a serving setting: these items never reach training, so their
        # vectors come from content alone (the id embedding is zeroed below)
        progress(f"  cold-start check: {len(cold_items):,} items held out of training")

    store = open_store(settings)
    run = Run.create(settings.artifacts_dir)
    kinds = write_positives(settings, split, run.file(POSITIVES), labels, cold_items)
    attributes = load_item_attributes(settings)
    examples = training_examples(store, split, run.file(POSITIVES), cfg.example_chunk_rows)
    items, users, counts, model_cfg = encode_training_set(
        settings, examples, positive_users(run.file(POSITIVES)), attributes, run.file(ARRAYS)
    )
    run.remove(POSITIVES)
    n_examples = int(counts.sum())
    described = ", ".join(f"{n:,} {t}s" for t, n in kinds.items())
    progress(f"  training set: {described} with point-in-time features from Feast "
             f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
    if model_cfg.text_dim:
        progress(f"  item text embeddings: {model_cfg.text_dim}-d, in both towers")
    state, fit_metrics, fit_seconds = fit_torch(
        settings, train_func, fit_config(settings, run.file(ARRAYS), model_cfg),
        f"two_tower_{run.id}", WEIGHTS, plain=fit_two_tower,
    )  # fmt: skip
    run.remove(ARRAYS)  # derived from Feast; not needed to serve
    model = TwoTower(model_cfg)
    model.load_state_dict(state)
    model.eval()
    zero_untrained_ids(model, counts)
    where = (f"Ray Train, {cfg.num_workers} worker(s)" if fit_metrics["backend"] == "ray"
             else "in-process")  # fmt: skip
    progress(f"  two-tower: {cfg.epochs} epochs ({where}), "
             f"loss {fit_metrics.get('loss', float('nan')):.3f} ({fit_seconds:.1f}s)")  # fmt: skip

    # The run's item vectors, computed once as of the cutoff (the end of what the model and the
    # sources learn from): the evaluation below, the ranker's two-tower feature and `recsys
    # index` all read this one copy.
    catalog = catalog_frame(store, attributes, items.item_ids, cutoff).merge(
        item_titles(settings), on="item_id", how="left"
    )
    vectors = item_vectors(model, items, catalog)
    run.write_item_vectors(vectors)
    metrics = evaluate(store, model, users, items, vectors, train_rows, test_rows, cutoff,
                       recent_days=settings.evaluation.recent_popularity_days,
                       cold_items=cold_items)  # fmt: skip
    metrics["fit"] = fit_metrics | {"seconds": round(fit_seconds, 2)}
    ranking = None
    if labels is not None:
        train_users = sorted(train_rows["user_id"].unique())
        entity_df = pd.DataFrame({"user_id": train_users, "event_timestamp": cutoff})
        user_rows = historical_features(store, entity_df, RANKING_USER_REFS)
        ranking = fit_ranking(
            settings, fit_purchases, train_rows, labels, items.vocab, catalog, user_rows,
            lambda frame: user_vectors(model, users, items, frame), vectors, cutoff, run,
            progress,
        )  # fmt: skip
    sessions = None
    if settings.sessions.enabled and not split.undated and split.mode == "temporal":
        interactions = table_path(settings.validated_dir, "interactions")
        sessions = fit_session_pipeline(settings, interactions, train_rows, items.vocab,
                                        catalog, cutoff, run, progress)  # fmt: skip
    save_two_tower(run, model, users, items)
    run.write_manifest({
        **manifest_entry(model),
        "run_id": run.id,
        "created_at": datetime.now(UTC).isoformat(),
        "train_config": cfg.model_dump(),
        "data": {
            "home": str(settings.home),
            "evaluation": split.describe(),
            "signal": signal,
            "purchases": len(purchases),
            "train_examples": n_examples,
            "test_purchases": len(test_rows),
            "start": str(purchases["timestamp"].min()),
            "cutoff": str(cutoff),
            "end": str(end),
        },
        "metrics": metrics,
        "ranking": ranking,
        "sessions": sessions,
    })  # fmt: skip
    run.set_current()
    log.info("saved run %s: %s", run.path, json.dumps(metrics))
    return TrainResult(run.path, metrics)


def encode_training_set(
    settings: Settings,
    examples: Iterable[pd.DataFrame],
    user_ids: list[str],
    attributes: pd.DataFrame,
    arrays_path: Path,
) -> tuple[ItemEncoder, UserEncoder, np.ndarray, TwoTowerConfig]:
    """Encode the training rows (``examples``: chunks of :func:`training_examples`; users in
    ``user_ids``), fit the encoders' scaling on all of them, write the arrays ``train_func``
    reads (to ``arrays_path``) and size the model. Returns (items, users, examples per item
    index, model config).

    Each chunk is encoded as it arrives and only its arrays are kept (about 200 bytes a row):
    the numeric features are kept raw until every row is in, then scaled by the statistics of
    all of them, which gives the arrays of encoding one frame of every row at once."""
    cfg = settings.train
    history = settings.features.recent_items
    catalogue = ItemEncoder.for_catalogue(attributes)
    user_vocab = Vocabulary(user_ids)
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for chunk in examples:
        encoded = catalogue.encode_catalogue(chunk) | {
            "user_idx": user_vocab.encode(chunk["user_id"].astype(str).to_numpy()),
            "history": history_indices(chunk["purchased_items"], catalogue, history),
            # raw until every row is in (float32: half the memory; statistics in float64)
            "demand": item_demand(chunk).astype(np.float32),
            "user_raw": user_numeric_raw(chunk, len(chunk)).astype(np.float32),
        }
        for name, values in encoded.items():
            parts[name].append(values)
    if not sum(len(p) for p in parts["user_idx"]):
        raise ValueError(
            "no training examples: the validated interactions have no "
            f"{'/'.join(cfg.train_events)} events before the cutoff (RECSYS_TRAIN__TRAIN_EVENTS)."
        )
    demand, raw = parts.pop("demand"), parts.pop("user_raw")
    items = catalogue.with_demand_scale(np.concatenate(demand))
    users = UserEncoder.fit_raw(user_ids, np.concatenate(raw), history)
    # scaled chunk by chunk: a float64 temporary of every row at once would double the peak
    parts["item_numeric"] = [items.scale_demand(demand.pop(0)) for _ in range(len(demand))]
    parts["user_numeric"] = [users.scale(raw.pop(0)) for _ in range(len(raw))]
    arrays = {name: np.concatenate(parts.pop(name)) for name in list(parts)}
    counts = np.bincount(arrays["item_idx"], minlength=items.n_items).astype(np.float64)
    log_q = np.log((counts + 1.0) / (counts + 1.0).sum()).astype(np.float32)
    item_table = items.attribute_table(item_frame(attributes, items.item_ids))
    text = item_text_table(settings, items.item_ids)
    extra = {} if text is None else {"item_text": text}
    np.savez(arrays_path, log_q=log_q, item_table=item_table, **extra, **arrays)
    model_cfg = TwoTowerConfig(
        n_users=users.n_users, n_items=items.n_items, attr_sizes=items.attr_sizes(),
        n_user_numeric=len(USER_NUMERIC), n_item_numeric=len(ITEM_NUMERIC), dim=cfg.dim,
        temperature=cfg.temperature, id_dropout=cfg.id_dropout, user_ids=cfg.user_id_embedding,
        text_dim=0 if text is None else int(text.shape[1]),
    )  # fmt: skip
    return items, users, counts, model_cfg


def fit_config(settings: Settings, arrays: Path, model_cfg: TwoTowerConfig) -> dict[str, Any]:
    """The config :func:`pipelines.two_tower_fit.train_func` runs with (on every worker)."""
    loop = {"epochs", "batch_size", "lr", "weight_decay", "temperature", "seed"}
    return {
        "arrays": str(arrays),
        "model": model_cfg.to_dict(),
        "threads": worker_threads(settings),
        **settings.train.model_dump(include=loop),
    }


def item_text_table(settings: Settings, item_ids: list[str]) -> np.ndarray | None:
    """Text embeddings in vocabulary order (row ``i + 1`` = ``item_ids[i]``, row 0 = padding),
    or None when ``train.text_embeddings`` is ``off``, ``recsys embed`` has not run or no
    catalogue item has any text.

    Items missing from the file (added to the catalogue since the last ``recsys embed``) get a
    zero row: the towers then place them from their id and attributes alone, as without text.
    So do items with no title, description or attribute: ``recsys embed`` encodes their empty
    text like any other, and one shared vector for all of them told the towers that they are
    alike (on ASOS, ids only, that vector for every item was the whole table).
    """
    if settings.train.text_embeddings == "off":
        log.info("item text embeddings off (RECSYS_TRAIN__TEXT_EMBEDDINGS=off)")
        return None
    path = settings.item_embeddings_path("text")
    if not path.exists():
        log.warning("no item text embeddings at %s: training without them; run `recsys embed` "
                    "before `recsys train` to give both towers the item descriptions",
                    path)  # fmt: skip
        return None
    table = pq.read_table(path)
    kind = (table.schema.metadata or {}).get(b"recsys.embed.kind", b"text")
    if not {"item_id", "vector"} <= set(table.column_names) or kind != b"text":
        raise ValueError(
            f"{path} is not text embeddings written by `recsys embed` (it needs item_id and "
            "vector columns, kind text): delete it and run `recsys embed --kind text`."
        )
    vectors = read_vectors(table, path)
    position = {item: row for row, item in enumerate(table.column("item_id").to_pylist())}
    rows = np.fromiter((position.get(i, -1) for i in item_ids), np.int64, len(item_ids))
    found = rows >= 0
    if not vectors.size or not found.any():
        raise ValueError(
            f"{path} has no vector for any of the {len(item_ids):,} catalogue items: it was "
            "embedded from another catalogue; run `recsys embed` again (or set "
            "RECSYS_TRAIN__TEXT_EMBEDDINGS=off)."
        )
    if not found.all():
        log.warning("%d of %d catalogue items have no text embedding in %s (zeros for them): "
                    "run `recsys embed` after catalogue changes",
                    int((~found).sum()), len(item_ids), path)  # fmt: skip
    described = found & has_text(settings, item_ids)
    if not described.any():
        log.info("item text embeddings: no catalogue item has a title, description or "
                 "attribute; training without text")  # fmt: skip
        return None
    out = np.zeros((len(item_ids) + 1, vectors.shape[1]), dtype=np.float32)
    out[1:][described] = vectors[rows[described]]
    log.info("item text embeddings: %d-d for %d items from %s", out.shape[1], described.sum(),
             path)  # fmt: skip
    return out


def has_text(settings: Settings, item_ids: list[str]) -> np.ndarray:
    """Whether each item of the validated catalogue has any text to embed (``item_text``)."""
    path = table_path(settings.validated_dir, "items")
    items = pd.read_parquet(path).drop_duplicates("item_id", keep="last")
    texts = {str(row["item_id"]): item_text(row) for row in items.to_dict("records")}
    return np.fromiter((bool(texts.get(i)) for i in item_ids), bool, len(item_ids))


def evaluate(
    store,
    model: TwoTower,
    users: UserEncoder,
    items: ItemEncoder,
    padded_vectors: np.ndarray,
    train_rows: pd.DataFrame,
    test_rows: pd.DataFrame,
    cutoff: pd.Timestamp,
    k: int = 10,
    recent_days: int = 14,
    cold_items: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Recall/NDCG@k on the held-out window for the model and two popularity baselines.

    ``padded_vectors``: the run's item vectors (row = item index, row 0 the unknown item).
    Every model ranks the same users, sees features as of the cutoff (Feast, point in time),
    and has the items each user bought before the cutoff removed from its list and the truth.
    """
    seen = train_rows.groupby("user_id")["item_id"].agg(set).to_dict()
    truth_all = test_rows.groupby("user_id")["item_id"].agg(set).to_dict()
    truth = {u: rel - seen.get(u, set()) for u, rel in truth_all.items()}
    truth = {u: rel for u, rel in truth.items() if rel}
    test_users = sorted(truth)
    entity_df = pd.DataFrame({"user_id": test_users, "event_timestamp": cutoff})
    feats = historical_features(store, entity_df, USER_FEATURE_REFS)
    feats = feats.set_index("user_id").reindex(test_users).reset_index()
    item_vecs = padded_vectors[1:]
    user_vecs = user_vectors(model, users, items, feats)
    ranked: list[list[str]] = []
    for lo in range(0, len(test_users), 2048):  # bounded memory: users x catalogue per chunk
        chunk = test_users[lo : lo + 2048]
        scores = user_vecs[lo : lo + 2048] @ item_vecs.T
        ranked += _top_k(scores, items.item_ids, [seen.get(u, set()) for u in chunk], k)
    two_tower = evaluate_rankings(dict(zip(test_users, ranked, strict=True)), truth, k)
    cold = _cold_item_metrics(user_vecs, item_vecs, items, test_users, seen, truth, cold_items, k)

    def popularity(since: pd.Timestamp | None = None) -> dict[str, float]:
        ranking = top_items(train_rows, since=since)["item_id"].tolist()
        return evaluate_rankings(recommend_popular(ranking, seen, test_users, k), truth, k)

    return {
        "k": k,
        "cutoff": str(cutoff),
        "two_tower": two_tower,
        "popularity": popularity(),
        "popularity_recent": popularity(since=cutoff - pd.Timedelta(days=recent_days)),
        "cold_items": cold,
    }


def _pick_cold_items(test_rows: pd.DataFrame, fraction: float, seed: int) -> frozenset[str]:
    """A random share of the items bought in the test period, to keep out of training."""
    if fraction <= 0:
        return frozenset()
    candidates = np.sort(test_rows["item_id"].unique())
    n = max(1, int(round(fraction * len(candidates))))
    rng = np.random.default_rng(seed + 1)
    return frozenset(rng.choice(candidates, min(n, len(candidates)), replace=False).tolist())


@torch.no_grad()
def zero_untrained_ids(model: TwoTower, counts: np.ndarray) -> None:
    """Zero the id embeddings of items no training example had.

    Their rows still hold the random initialisation, which would add noise to a vector that
    should come from content alone; zero is exactly what id dropout trained the towers to
    see for an unknown id, so a new item is served from its attributes and demand.
    """
    untrained = torch.as_tensor(np.flatnonzero(counts == 0))
    if len(untrained):
        model.item_id.weight[untrained] = 0.0
        model.history_item.weight[untrained] = 0.0


def _cold_item_metrics(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    items: ItemEncoder,
    test_users: list[str],
    seen: dict[str, set[str]],
    truth: dict[str, set[str]],
    cold_items: frozenset[str],
    k: int,
) -> dict[str, Any] | None:
    """Recall@k on test purchases of items held out of training, against random ranking.

    Two views: ranked among the whole catalogue (can a new item compete at all?) and among the
    held-out items only (does content place the right new item first?).
    """
    if not cold_items:
        return None
    cold_idx = np.array(sorted(items.index(i) - 1 for i in cold_items if items.index(i) > 0))
    rows = [r for r, u in enumerate(test_users) if truth[u] & cold_items]
    if not rows or not len(cold_idx):
        return {"items": len(cold_items), "users": 0}
    ids = items.item_ids
    hits_all = hits_cold = total = 0
    for r in rows:
        user = test_users[r]
        rel = truth[user] & cold_items
        scores = item_vecs @ user_vecs[r]
        top_all = _top_k(scores[None, :], ids, [seen.get(user, set())], k)[0]
        within = cold_idx[np.argsort(-scores[cold_idx], kind="stable")[:k]]
        hits_all += len(rel & set(top_all))
        hits_cold += len(rel & {ids[i] for i in within})
        total += len(rel)
    n_catalog, n_cold = len(ids), len(cold_idx)
    return {
        "items": n_cold,
        "users": len(rows),
        "pairs": total,
        f"recall@{k}_catalogue": round(hits_all / total, 4),
        f"random@{k}_catalogue": round(min(k, n_catalog) / n_catalog, 4),
        f"recall@{k}_among_cold": round(hits_cold / total, 4),
        f"random@{k}_among_cold": round(min(k, n_cold) / n_cold, 4),
    }
