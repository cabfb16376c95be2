"""Item vector search behind one interface, with a backend chosen by configuration.

``edge`` (default) runs Qdrant's engine in-process on folders under ``RECSYS_HOME/qdrant``;
``qdrant`` talks to a Qdrant server (``url``), or runs qdrant-client's local mode on a folder
(``path``, no server: tests and trying the backend, one process at a time). Both return the
same hits for the same data and handle collections and aliases the same way, so code above this
package never needs to know which one it got::

    store = open_vector_store(settings.vector_store, settings.home, read_only=True)
    load_model(store.current_run_id)          # the model that matches the pinned vectors
    hits = store.search(user_vector, k=10, flt=SearchFilter(exclude_ids=frozenset(bought)))

``recsys index`` builds a collection per model run and moves the alias
(``settings.vector_store.collection``, default ``items``) to it; ``recsys rollback`` moves it
back. A store keeps the collection it first resolved: to follow a move, open a new one (as the
API does). Several serving processes on the edge backend need ``read_only=True`` (``edge.py``).

The index settings (``payload_indexes``, ``hnsw_m`` / ``hnsw_ef_construct`` / ``hnsw_ef``,
``quantization`` and its knobs) reach both backends as one :class:`IndexConfig`;
``tests/test_vectorstore_contract.py`` holds every backend to the same behaviour.
"""

from __future__ import annotations

from pathlib import Path

from recsys.core.settings import VectorStoreSettings
from recsys.core.vectorstore.base import (
    AliasEntry,
    AliasError,
    CollectionNotFoundError,
    Hit,
    IndexConfig,
    ItemPoint,
    ReadOnlyStoreError,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    VectorStoreError,
    check_name,
    collection_name,
)
from recsys.core.vectorstore.edge import EdgeVectorStore
from recsys.core.vectorstore.qdrant_server import QdrantServerVectorStore

__all__ = [
    "AliasEntry",
    "AliasError",
    "CollectionNotFoundError",
    "EdgeVectorStore",
    "Hit",
    "IndexConfig",
    "ItemPoint",
    "QdrantServerVectorStore",
    "ReadOnlyStoreError",
    "SearchFilter",
    "VectorStore",
    "VectorStoreConfigError",
    "VectorStoreError",
    "collection_name",
    "index_config",
    "open_vector_store",
]


def index_config(cfg: VectorStoreSettings) -> IndexConfig:
    """The backend-neutral index settings of ``cfg`` (what ``create_collection`` builds)."""
    return IndexConfig(
        payload_indexes=dict(cfg.payload_indexes),
        hnsw_m=cfg.hnsw_m,
        hnsw_ef_construct=cfg.hnsw_ef_construct,
        quantization=cfg.quantization,
        quantile=cfg.quantization_quantile,
        always_ram=cfg.quantization_always_ram,
        rescore=cfg.quantization_rescore,
        oversampling=cfg.quantization_oversampling,
    )


def open_vector_store(
    cfg: VectorStoreSettings,
    home: Path,
    collection: str | None = None,
    *,
    read_only: bool = False,
) -> VectorStore:
    """Build the configured store on ``collection`` (default ``cfg.collection``, the alias).

    Nothing is opened or contacted here: stores connect on first use, so a missing collection
    surfaces as :class:`CollectionNotFoundError` from ``search``/``count`` (or ``ok=False`` from
    ``health``) with a hint to run ``recsys index``.
    """
    name = check_name(collection or cfg.collection)
    index = index_config(cfg)
    if cfg.type == "edge":
        return EdgeVectorStore(
            Path(home) / "qdrant" / name, hnsw_ef=cfg.hnsw_ef, read_only=read_only, index=index
        )
    if cfg.type == "qdrant":
        if not cfg.url and cfg.path is None:
            raise VectorStoreConfigError(
                "vector_store.type is 'qdrant' but no server URL is configured: set "
                "RECSYS_VECTOR_STORE__URL (e.g. http://localhost:6333), "
                "RECSYS_VECTOR_STORE__PATH for qdrant-client's local mode on a folder (tests, "
                "no server), or use RECSYS_VECTOR_STORE__TYPE=edge for the in-process store."
            )
        path = None
        if not cfg.url and cfg.path is not None:
            path = cfg.path if cfg.path.is_absolute() else Path(home) / cfg.path
        return QdrantServerVectorStore(
            name,
            url=cfg.url,
            api_key=cfg.api_key,
            path=path,
            hnsw_ef=cfg.hnsw_ef,
            read_only=read_only,
            index=index,
        )
    raise VectorStoreConfigError(f"Unknown vector store type {cfg.type!r}: use edge or qdrant.")
