"""Write the current model's item vectors, with filterable payloads, to the vector store.

Each run goes into a new collection named after the model run (``items__<run>``); the alias
(``vector_store.collection``) moves to it only once it is complete, so serving never sees a
half-built index and can follow the alias without a restart. Older collections beyond
``vector_store.keep_collections`` are dropped; ``recsys rollback`` moves the alias back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from models.encoding import load_item_ids
from recsys.core.catalog import item_payloads
from recsys.core.run import Run
from recsys.core.schema import EXTRA_PREFIX
from recsys.core.settings import Settings
from recsys.core.terminal import track
from recsys.core.values import is_missing
from recsys.core.vectorstore import ItemPoint, open_vector_store

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


def build_index(settings: Settings) -> IndexSummary:
    started = time.perf_counter()
    run = Run.current(settings.artifacts_dir)
    item_ids = load_item_ids(run)
    vectors = run.item_vectors()[1:]  # row i + 1 = item_ids[i]; row 0 is the unknown item
    payloads = item_payloads(settings, item_ids)
    extras = [c for c in payloads.columns if c.startswith(EXTRA_PREFIX)]  # passed through
    known = (*KEYWORD_FIELDS, "title", *FLOAT_FIELDS, *BOOL_FIELDS)
    fields = [c for c in known if c in payloads] + extras
    # no missing values in a payload: absent beats null for Qdrant filters
    records = [{k: v for k, v in r.items() if not is_missing(v)}
               for r in payloads[fields].to_dict("records")]  # fmt: skip
    alias, run_id = settings.vector_store.collection, run.id
    store = open_vector_store(settings.vector_store, settings.home)
    try:
        name = store.new_collection_name(alias, run_id)
        store.create_collection(name, vectors.shape[1], keyword_fields=KEYWORD_FIELDS,
                                float_fields=FLOAT_FIELDS, bool_fields=BOOL_FIELDS,
                                run_id=run_id)  # fmt: skip
        try:
            points = (ItemPoint(i + 1, vectors[i], records[i]) for i in range(len(records)))
            store.upsert(  # point id = vocabulary index of the item
                track(points, "index points", len(records), "points"), collection=name
            )
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
    log.info("indexed %d items (dim %d) into %s in %.1fs; %s -> %s (was %s), dropped %s",
             len(records), vectors.shape[1], name, seconds, alias, name, previous,
             dropped or "nothing")  # fmt: skip
    return IndexSummary(len(records), int(vectors.shape[1]), run.path, seconds, health,
                        collection=name, previous=previous, dropped=tuple(dropped))  # fmt: skip
