"""Write the current model's item vectors, with filterable payloads, to the vector store."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.artifacts import current_run, load_run
from pipelines.schema import table_path
from pipelines.train import catalog_frame, item_frame, item_vectors, load_item_attributes
from recsys.config import Settings
from recsys.feast_store import open_store
from recsys.vectorstore import ItemPoint, open_vector_store

log = logging.getLogger(__name__)

KEYWORD_FIELDS = ("item_id", "category", "colour", "department", "style", "product_type")
FLOAT_FIELDS = ("price",)
BOOL_FIELDS = ("in_stock",)


@dataclass(frozen=True)
class IndexSummary:
    points: int
    dim: int
    run_dir: Path
    seconds: float
    health: dict


def item_payloads(settings: Settings, item_ids: list[str]) -> pd.DataFrame:
    """Catalogue attributes plus title, one row per item id in the given order."""
    attributes = item_frame(load_item_attributes(settings), item_ids)
    titles_path = table_path(settings.validated_dir, "items")
    titles = pd.read_parquet(titles_path, columns=["item_id", "title"]).drop_duplicates("item_id")
    frame = attributes.merge(titles, on="item_id", how="left")
    frame["title"] = frame["title"].fillna(frame["item_id"])
    return frame


def build_index(settings: Settings) -> IndexSummary:
    started = time.perf_counter()
    run_dir = current_run(settings.artifacts_dir)
    model, _users, items, _manifest = load_run(run_dir)
    as_of = pd.Timestamp.now(tz="UTC")
    catalog = catalog_frame(
        open_store(settings), load_item_attributes(settings), items.item_ids, as_of
    )
    vectors = item_vectors(model, items, catalog)
    payloads = item_payloads(settings, items.item_ids)
    fields = [c for c in (*KEYWORD_FIELDS, "title", *FLOAT_FIELDS, *BOOL_FIELDS) if c in payloads]
    records = payloads[fields].to_dict("records")
    store = open_vector_store(settings.vector_store, settings.home)
    try:
        store.recreate(
            vectors.shape[1],
            keyword_fields=KEYWORD_FIELDS,
            float_fields=FLOAT_FIELDS,
            bool_fields=BOOL_FIELDS,
        )
        store.upsert(
            ItemPoint(i + 1, vectors[i], records[i]) for i in range(len(records))
        )  # point id = vocabulary index of the item
        store.finalize()
        health = store.health()
    finally:
        store.close()
    seconds = time.perf_counter() - started
    log.info("indexed %d items (dim %d) in %.1fs", len(records), vectors.shape[1], seconds)
    return IndexSummary(len(records), int(vectors.shape[1]), run_dir, seconds, health)
