"""Vector store backend on a Qdrant server through qdrant-client.

Use it when several serving processes or machines share one index, or when the catalogue
outgrows one node. ``location=":memory:"`` (or a ``client=`` in local mode) runs the same client
calls against qdrant-client's local mode, so tests exercise this module without a server; local
mode is a brute-force scan in Python, so it is exact but slow and meant for tests only.

Aliases are Qdrant's own collection aliases: one ``update_collection_aliases`` call that deletes
and re-creates the alias is atomic on the server (and in local mode, which applies a batch to a
copy). The alias history lives in the metadata of the collection the alias points at (key
``alias_history:<alias>``), written before the alias moves: the history is therefore always
read from the same place the alias leads to, and a failed move leaves nothing inconsistent. The
run id of each collection is in its own metadata. Collection metadata needs a Qdrant server
recent enough to accept the ``metadata`` field of create/update collection.

Qdrant names are shared by collections and aliases, so a plain collection ``items`` from before
aliases cannot coexist with an alias ``items``: the first ``set_alias("items", ...)`` copies it
to ``items__legacy``, deletes it, and creates the alias (which keeps the copy as the rollback
target). Between the delete and the alias creation (milliseconds) searches by name fail.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse
from qdrant_client.local.qdrant_local import QdrantLocal

from recsys.core.vectorstore.base import (
    INDEX_HINT,
    INDEXING_THRESHOLD_KB,
    AliasEntry,
    CollectionNotFoundError,
    Hit,
    ItemPoint,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    VectorStoreError,
    as_vector,
    full_scan_threshold_kb,
    now_iso,
    point_batches,
    to_hits,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MEMORY = ":memory:"

#: Metadata key, on the collection an alias points at, that holds the alias's history.
HISTORY_KEY = "alias_history:"

#: How long :meth:`QdrantServerVectorStore.finalize` waits for the server to finish indexing.
FINALIZE_TIMEOUT_S = 600.0

#: Suffix of the copy made of a plain pre-alias collection (see the module docstring).
LEGACY_SUFFIX = "legacy"

#: The server's payload index type for each kind that ``VectorStore._create`` names.
PAYLOAD_SCHEMAS = {
    "keyword": qm.PayloadSchemaType.KEYWORD,
    "float": qm.PayloadSchemaType.FLOAT,
    "bool": qm.PayloadSchemaType.BOOL,
}


def server_filter(flt: SearchFilter | None) -> qm.Filter | None:
    """Translate a :class:`SearchFilter` into qdrant-client models (same semantics as edge)."""
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    for key, value in flt.equals.items():
        must.append(qm.FieldCondition(key=key, match=qm.MatchValue(value=value)))
    for key, values in flt.any_of.items():
        must.append(qm.FieldCondition(key=key, match=qm.MatchAny(any=list(values))))
    for key, (low, high) in flt.ranges.items():
        must.append(qm.FieldCondition(key=key, range=qm.Range(gte=low, lte=high)))
    must_not = [qm.HasIdCondition(has_id=sorted(flt.exclude_ids))] if flt.exclude_ids else None
    return qm.Filter(must=must or None, must_not=must_not)


class QdrantServerVectorStore(VectorStore):
    """Collections and aliases on a Qdrant server (``url``) or in qdrant-client's local mode.

    ``location=":memory:"`` runs qdrant-client's in-process local mode (tests); ``client`` shares
    an existing client (e.g. one local-mode client between a writer and a reader in tests), which
    :meth:`close` leaves open. The client is created on first use, so constructing a store never
    touches the network. Searches go to the pinned collection, not to the alias, so that a
    request never meets item vectors of another model run than the one the API loaded.
    """

    backend = "qdrant"

    def __init__(
        self,
        collection: str,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        hnsw_ef: int = 64,
        *,
        client: QdrantClient | None = None,
        read_only: bool = False,
    ) -> None:
        if not url and not location and client is None:
            raise VectorStoreConfigError(
                "A Qdrant server URL is required: set RECSYS_VECTOR_STORE__URL "
                "(e.g. http://localhost:6333), or use RECSYS_VECTOR_STORE__TYPE=edge."
            )
        super().__init__(collection, read_only=read_only, hnsw_ef=hnsw_ef)
        self.url = url or None
        self.api_key = api_key
        self.location = None if url else location
        self._owns_client = client is None
        if client is not None:
            self._local = isinstance(getattr(client, "_client", None), QdrantLocal)
        else:
            self._local = self.url is None and self.location == MEMORY
        self._client: QdrantClient | None = client
        self._dims: dict[str, int] = {}

    def where(self, name: str | None = None) -> str:
        name = name or self._pinned or self.name
        via = f" (alias {self.name!r})" if name != self.name else ""
        return f"collection {name!r}{via} at {self.url or self.location or 'a shared client'}"

    @property
    def client(self) -> QdrantClient:
        """The qdrant-client instance, created on first use."""
        if self._client is None:
            if self.url:
                self._client = QdrantClient(url=self.url, api_key=self.api_key)
            else:
                self._client = QdrantClient(location=self.location)
        return self._client

    def close(self) -> None:
        """Close the connection. An in-memory collection lives in its client and survives."""
        if self._client is not None and self._owns_client and not self._local:
            self._client.close()
            self._client = None

    # -- error handling ----------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], name: str | None = None) -> T:
        """Run a client call, turning "collection not found" into a message that says why."""
        try:
            return fn()
        except VectorStoreError:
            raise
        except Exception as exc:
            not_found = (isinstance(exc, UnexpectedResponse) and exc.status_code == 404) or (
                isinstance(exc, ValueError) and "not found" in str(exc)
            )
            if not_found:
                self._dims.pop(name or "", None)
                if name is not None and name == self._pinned and name != self.name:
                    raise CollectionNotFoundError(
                        f"The {self.where(name)} is gone (pruned after the alias moved on): "
                        f"open the store again to follow alias {self.name!r}."
                    ) from exc
                raise CollectionNotFoundError(
                    f"No vector {self.where(name)}: {INDEX_HINT}."
                ) from exc
            raise VectorStoreError(f"{what} on {self.where(name)} failed: {exc}") from exc

    def _info(self, name: str) -> Any:
        """The server's description of a collection (config, status, payload indexes)."""
        return self._call("Reading", lambda: self.client.get_collection(name), name)

    def _collection_dim(self, name: str) -> int:
        """Vector size of a collection, fetched once; also proves that it exists."""
        dim = self._dims.get(name)
        if dim is None:
            info = self._info(name)
            vectors = info.config.params.vectors
            if not isinstance(vectors, qm.VectorParams):
                raise VectorStoreError(f"The {self.where(name)} does not have one unnamed vector.")
            dim = self._dims[name] = int(vectors.size)
        return dim

    # -- collections -------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        response = self._call("Listing collections", self.client.get_collections)
        return sorted(c.name for c in response.collections)

    def list_aliases(self) -> dict[str, str]:
        response = self._call("Listing aliases", self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def _create(
        self, name: str, dim: int, indexes: Sequence[tuple[str, str]], metadata: dict[str, Any]
    ) -> None:
        """Create the collection with indexing paused until :meth:`finalize`.

        ``indexing_threshold=0`` during the bulk load is Qdrant's advice for fast uploads: the
        graph is built once at the end rather than re-built as segments fill up.
        """
        client = self.client

        def create() -> None:
            client.create_collection(
                name,
                vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
                hnsw_config=qm.HnswConfigDiff(full_scan_threshold=full_scan_threshold_kb(dim)),
                optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=0),
                metadata=metadata,
            )
            for field_name, kind in indexes:
                with warnings.catch_warnings():
                    # Local mode warns that payload indexes have no effect there.
                    if self._local:
                        warnings.simplefilter("ignore", UserWarning)
                    client.create_payload_index(
                        name, field_name, field_schema=PAYLOAD_SCHEMAS[kind], wait=True
                    )

        self._call("Creating", create, name)
        self._dims[name] = dim

    def _drop(self, name: str) -> None:
        self._call("Deleting", lambda: self.client.delete_collection(name), name)
        self._dims.pop(name, None)
        if self._pinned == name:
            self._pinned = None

    def _metadata(self, name: str) -> dict[str, Any]:
        try:
            info = self._info(name)
        except CollectionNotFoundError:
            return {}
        metadata = getattr(info.config, "metadata", None)
        return dict(metadata) if isinstance(metadata, dict) else {}

    # -- aliases -------------------------------------------------------------------------------

    def _read_alias(self, alias: str) -> list[AliasEntry] | None:
        target = self.list_aliases().get(alias)
        if target is None:
            return None
        raw = self._metadata(target).get(HISTORY_KEY + alias)
        try:
            history = [AliasEntry.from_json(e) for e in raw] if isinstance(raw, list) else []
        except ValueError:
            log.warning("ignoring a malformed history of alias %r on %r", alias, target)
            history = []
        return self._ending_at(history, target)

    def _write_alias(self, alias: str, history: list[AliasEntry]) -> None:
        target = history[-1].collection
        entries = [entry.to_json() for entry in history]
        self._call(
            "Recording the alias history",
            lambda: self.client.update_collection(target, metadata={HISTORY_KEY + alias: entries}),
            target,
        )
        operations: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = [
            qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)),
            qm.CreateAliasOperation(
                create_alias=qm.CreateAlias(collection_name=target, alias_name=alias)
            ),
        ]
        self._call(
            "Moving the alias",
            lambda: self.client.update_collection_aliases(change_aliases_operations=operations),
            target,
        )

    def _before_alias_change(self, alias: str) -> None:
        """Adopt a plain collection named ``alias``: copy it, delete it, alias the copy."""
        if alias in self.list_aliases() or not self.collection_exists(alias):
            return
        legacy = self.new_collection_name(alias, LEGACY_SUFFIX)
        log.warning(
            "copying the plain collection %r to %r to make %r an alias", alias, legacy, alias
        )
        self._copy_collection(alias, legacy)
        self._drop(alias)
        self._write_alias(alias, [AliasEntry(legacy, None, now_iso())])

    def _copy_collection(self, source: str, target: str) -> None:
        """Copy points, vectors, payloads and payload indexes into a new collection."""
        dim = self._collection_dim(source)
        kinds = {schema: kind for kind, schema in PAYLOAD_SCHEMAS.items()}
        indexes = [
            (field_name, kinds[index.data_type])
            for field_name, index in (self._info(source).payload_schema or {}).items()
            if index.data_type in kinds
        ]
        self._create(target, dim, indexes, {"created_at": now_iso(), "copied_from": source})
        offset = None
        while True:
            records, offset = self._call(
                "Reading points",
                lambda offset=offset: self.client.scroll(
                    source, limit=1024, offset=offset, with_payload=True, with_vectors=True
                ),
                source,
            )
            if records:
                self.upsert(
                    (ItemPoint(int(r.id), r.vector, dict(r.payload or {})) for r in records),
                    collection=target,
                )
            if offset is None:
                break
        self.finalize(collection=target)

    # -- building ----------------------------------------------------------------------------

    def _upsert(self, points: Iterable[ItemPoint], batch_size: int, name: str) -> None:
        """Insert or replace points in batches, waiting for each batch to be applied."""
        for batch in point_batches(points, batch_size, self._collection_dim(name)):
            structs = [
                qm.PointStruct(id=point_id, vector=vector, payload=payload)
                for point_id, vector, payload in batch
            ]
            self._call(
                "Upsert",
                lambda structs=structs: self.client.upsert(name, points=structs, wait=True),
                name,
            )

    def _finalize(self, name: str) -> None:
        """Turn indexing on and wait until the server reports the collection green."""
        self._call(
            "Enabling indexing",
            lambda: self.client.update_collection(
                name,
                optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=INDEXING_THRESHOLD_KB),
            ),
            name,
        )
        if self._local:
            return  # local mode has no optimizer: everything is searchable at once
        deadline = time.monotonic() + FINALIZE_TIMEOUT_S
        greens = 0
        # The optimizer starts asynchronously: ask for green twice in a row to avoid reading
        # the status before it has switched to yellow.
        while greens < 2:
            info = self._info(name)
            greens = greens + 1 if info.status == qm.CollectionStatus.GREEN else 0
            if greens < 2:
                if time.monotonic() > deadline:
                    raise VectorStoreError(
                        f"The {self.where(name)} is still {info.status} after "
                        f"{FINALIZE_TIMEOUT_S:.0f} s of indexing."
                    )
                time.sleep(0.5)

    # -- reading -----------------------------------------------------------------------------

    def _search(
        self, name: str, vector: Any, k: int, flt: SearchFilter | None, with_payload: bool
    ) -> list[Hit]:
        query = as_vector(vector, self._collection_dim(name))
        # Local mode is brute force and warns that search params are ignored: leave them out.
        params = None if self._local else qm.SearchParams(hnsw_ef=max(self.hnsw_ef, k))
        response = self._call(
            "Search",
            lambda: self.client.query_points(
                name,
                query=query.tolist(),
                limit=k,
                query_filter=server_filter(flt),
                search_params=params,
                with_payload=with_payload,
            ),
            name,
        )
        return to_hits(response.points, with_payload)

    def _count(self, name: str) -> int:
        result = self._call("Counting", lambda: self.client.count(name, exact=True), name)
        return int(result.count)

    def _address(self) -> dict[str, Any]:
        return {"url": self.url or self.location}

    def _describe(self, name: str, out: dict[str, Any]) -> None:
        out["points"] = self._count(name)
        info = self._info(name)
        out.update(
            status=str(getattr(info.status, "value", info.status)),
            indexed_vectors=info.indexed_vectors_count,
        )

    def __repr__(self) -> str:
        return (
            f"QdrantServerVectorStore(collection={self.name!r}, "
            f"url={self.url or self.location!r}, hnsw_ef={self.hnsw_ef}, "
            f"read_only={self.read_only})"
        )
