"""Item vector search behind one interface, with a backend chosen by configuration.

``edge`` (default) runs Qdrant's engine in-process on a folder under ``RECSYS_HOME/qdrant``;
``qdrant`` talks to a Qdrant server. Both return the same hits for the same data, so code above
this package never needs to know which one it got::

    store = open_vector_store(settings.vector_store, settings.home)
    hits = store.search(user_vector, k=10, flt=SearchFilter(exclude_ids=frozenset(bought)))
"""

from __future__ import annotations

import re
from pathlib import Path

from recsys.config import VectorStoreSettings
from recsys.vectorstore.base import (
    CollectionNotFoundError,
    Hit,
    ItemPoint,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    VectorStoreError,
)
from recsys.vectorstore.edge import EdgeVectorStore
from recsys.vectorstore.qdrant_server import QdrantServerVectorStore

__all__ = [
    "CollectionNotFoundError",
    "EdgeVectorStore",
    "Hit",
    "ItemPoint",
    "QdrantServerVectorStore",
    "SearchFilter",
    "VectorStore",
    "VectorStoreConfigError",
    "VectorStoreError",
    "open_vector_store",
]

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def open_vector_store(
    cfg: VectorStoreSettings, home: Path, collection: str | None = None
) -> VectorStore:
    """Build the configured store for ``collection`` (default ``cfg.collection``).

    Nothing is opened or contacted here: stores connect on first use, so a missing collection
    surfaces as :class:`CollectionNotFoundError` from ``search``/``count`` (or ``ok=False`` from
    ``health``) with a hint to run ``recsys index``.
    """
    name = collection or cfg.collection
    # The name becomes a folder (edge) or a URL segment (server): keep it plain.
    if not _COLLECTION_NAME.match(name) or ".." in name:
        raise VectorStoreConfigError(
            f"Invalid collection name {name!r}: use letters, digits, '_', '-' and '.'."
        )
    if cfg.type == "edge":
        return EdgeVectorStore(Path(home) / "qdrant" / name, hnsw_ef=cfg.hnsw_ef)
    if cfg.type == "qdrant":
        if not cfg.url:
            raise VectorStoreConfigError(
                "vector_store.type is 'qdrant' but no server URL is configured: set "
                "RECSYS_VECTOR_STORE__URL (e.g. http://localhost:6333), or use "
                "RECSYS_VECTOR_STORE__TYPE=edge for the in-process store."
            )
        return QdrantServerVectorStore(name, url=cfg.url, api_key=cfg.api_key, hnsw_ef=cfg.hnsw_ef)
    raise VectorStoreConfigError(f"Unknown vector store type {cfg.type!r}: use edge or qdrant.")
