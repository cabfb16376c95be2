"""Write the current model's item vectors, with filterable payloads, to the vector store.

Each run goes into a new collection named after the model run (``items__<run>``); the alias
(``vector_store.collection``) moves to it only once it is complete, so serving never sees a
half-built index and can follow the alias without a restart. Older collections beyond
``vector_store.keep_collections`` are dropped; ``recsys rollback`` moves the alias back.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.artifacts import current_run, load_run
from pipelines.features import EXTRA_PREFIX
from pipelines.train import (
    catalog_frame,
    item_frame,
    item_titles,
    item_vectors,
    load_item_attributes,
)
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
    collection: str  # the collection built by this run, which the alias now points at
    previous: str | None  # what the alias pointed at before (None on the first index)
    dropped: tuple[str, ...] = ()  # old collections deleted (beyond keep_collections)


def item_payloads(settings: Settings, item_ids: list[str]) -> pd.DataFrame:
    """Catalogue attributes, title and extra catalogue columns, one row per item id in order."""
    attributes = item_frame(load_item_attributes(settings), item_ids)
    frame = attributes.merge(item_titles(settings), on="item_id", how="left")
    frame["title"] = frame["title"].fillna(frame["item_id"])
    return frame


def _payload(record: dict) -> dict:
    """A payload without missing values (absent beats null for Qdrant filters)."""
    return {
        k: v
        for k, v in record.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    }


def index_time(manifest: dict) -> pd.Timestamp:
    """When to read the items' demand features: now, or the end of the training data when that
    lies further back than the features' TTL would reach (a historical data set such as ASOS,
    whose 2020 features read "now" would all be expired and the item vectors built on zeros)."""
    now = pd.Timestamp.now(tz="UTC")
    end = manifest.get("data", {}).get("end")
    return min(now, pd.Timestamp(end)) if end else now


def build_index(settings: Settings) -> IndexSummary:
    started = time.perf_counter()
    run_dir = current_run(settings.artifacts_dir)
    model, _users, items, manifest = load_run(run_dir)
    as_of = index_time(manifest)
    catalog = catalog_frame(
        open_store(settings), load_item_attributes(settings), items.item_ids, as_of
    )
    vectors = item_vectors(model, items, catalog)
    payloads = item_payloads(settings, items.item_ids)
    extras = [c for c in payloads.columns if c.startswith(EXTRA_PREFIX)]  # passed through
    known = (*KEYWORD_FIELDS, "title", *FLOAT_FIELDS, *BOOL_FIELDS)
    fields = [c for c in known if c in payloads] + extras
    records = [_payload(r) for r in payloads[fields].to_dict("records")]
    alias = settings.vector_store.collection
    run_id = run_dir.name
    store = open_vector_store(settings.vector_store, settings.home)
    try:
        name = store.new_collection_name(alias, run_id)
        store.create_collection(
            name,
            vectors.shape[1],
            keyword_fields=KEYWORD_FIELDS,
            float_fields=FLOAT_FIELDS,
            bool_fields=BOOL_FIELDS,
            run_id=run_id,
        )
        try:
            store.upsert(
                (ItemPoint(i + 1, vectors[i], records[i]) for i in range(len(records))),
                collection=name,
            )  # point id = vocabulary index of the item
            store.finalize(collection=name)
            health = store.health(collection=name)
        except BaseException:
            try:  # nothing points at it yet: leave no half-built collection behind
                store.drop_collection(name)
            except Exception:
                log.exception("could not drop the half-built collection %s", name)
            raise
        # Let go of the new collection before publishing it: an API that follows the alias
        # with a writable edge store must be able to open it right away.
        store.close()
        previous = store.set_alias(alias, name, run_id=run_id)
        dropped = store.prune(alias, settings.vector_store.keep_collections)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    log.info(
        "indexed %d items (dim %d) into %s in %.1fs; %s -> %s (was %s), dropped %s",
        len(records),
        vectors.shape[1],
        name,
        seconds,
        alias,
        name,
        previous,
        dropped or "nothing",
    )
    return IndexSummary(
        len(records),
        int(vectors.shape[1]),
        run_dir,
        seconds,
        health,
        collection=name,
        previous=previous,
        dropped=tuple(dropped),
    )
