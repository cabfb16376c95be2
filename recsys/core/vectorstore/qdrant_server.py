"""Vector store backend on a Qdrant server through qdrant-client.

Use it when several serving processes or machines share one index, or when the catalogue
outgrows one node. ``location=":memory:"``, ``path=<folder>`` (``vector_store.path``) or a
``client=`` in local mode run the same client calls against qdrant-client's local mode, so tests
and a laptop exercise this module without a server; local mode is a brute-force scan in Python,
so it is exact but slow (see ``STACK_NOTES.md``) and meant for tests and trying the backend out.
A ``path`` folder persists, but qdrant-client locks it: one process at a time (stores of one
process share a client per folder, so the API can follow an alias while its old store is open).

What local mode cannot show, and therefore stays server-only (``tests/test_vectorstore_contract.py``
runs it against a server when ``QDRANT_URL`` is set):

* HNSW (``m``, ``ef_construct``, ``hnsw_ef`` at search) and int8 quantization are sent by the
  same calls, but local mode scans exactly and reports Qdrant's defaults in ``get_collection``;
  :meth:`QdrantServerVectorStore.health` then reports the settings recorded in the collection's
  metadata with ``applied: false``. Search parameters are left out in local mode only because
  it warns about them; :meth:`QdrantServerVectorStore.search_params` builds them either way.
* Payload indexes are accepted and ignored (no ``payload_schema``).
* :meth:`QdrantServerVectorStore.finalize` polls the collection status until it is green twice
  in a row; local mode is always green, so the loop passes at once without sleeping.
* A missing collection is an HTTP 404 on a server and a ``ValueError`` in local mode; both
  become :class:`CollectionNotFoundError`.

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

import atexit
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
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
    IndexConfig,
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

#: How long :meth:`QdrantServerVectorStore.finalize` waits for the server to finish indexing,
#: and how often it asks.
FINALIZE_TIMEOUT_S = 600.0
FINALIZE_POLL_S = 0.5

#: Suffix of the copy made of a plain pre-alias collection (see the module docstring).
LEGACY_SUFFIX = "legacy"

#: The server's payload index type for each kind that ``VectorStore._create`` names.
PAYLOAD_SCHEMAS = {
    "keyword": qm.PayloadSchemaType.KEYWORD,
    "integer": qm.PayloadSchemaType.INTEGER,
    "float": qm.PayloadSchemaType.FLOAT,
    "bool": qm.PayloadSchemaType.BOOL,
}
PAYLOAD_KIND_OF = {schema: kind for kind, schema in PAYLOAD_SCHEMAS.items()}


def quantization_config(index: IndexConfig) -> qm.ScalarQuantization | None:
    """The server's quantization config of a new collection (``None``: float vectors only)."""
    if index.quantization != "int8":
        return None
    return qm.ScalarQuantization(
        scalar=qm.ScalarQuantizationConfig(
            type=qm.ScalarType.INT8, quantile=index.quantile, always_ram=index.always_ram
        )
    )


# -- one local-mode client per folder and process --------------------------------------------

_LOCAL_CLIENTS: dict[str, list[Any]] = {}  # resolved path -> [client, number of stores using it]
_LOCAL_CLIENTS_LOCK = threading.Lock()


def acquire_local_client(path: Path) -> QdrantClient:
    """The process's qdrant-client local-mode client on ``path``, opened on first use.

    qdrant-client locks the folder for one client: a second client, even in the same process,
    fails. Sharing one per folder lets a process hold several stores on it (the API opens a new
    store when the alias moves, before it closes the old one), as stores share a server.
    """
    key = str(Path(path).resolve())
    with _LOCAL_CLIENTS_LOCK:
        entry = _LOCAL_CLIENTS.get(key)
        if entry is None:
            Path(key).mkdir(parents=True, exist_ok=True)
            try:
                # Searches run in the API's worker threads; local mode's sqlite is only
                # written by the (single) writer, so the same-thread check is not needed.
                client = QdrantClient(path=key, force_disable_check_same_thread=True)
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise VectorStoreError(
                    f"The qdrant-client local store {key} is open in another process (its "
                    "folder is locked): local mode allows one process per folder. Stop the "
                    "other process (e.g. `recsys serve`) first, or use a Qdrant server "
                    "(RECSYS_VECTOR_STORE__URL)."
                ) from exc
            entry = _LOCAL_CLIENTS[key] = [client, 0]
        entry[1] += 1
        return entry[0]


def release_local_client(path: Path) -> None:
    """One store stopped using the client on ``path``; the last one closes it (and unlocks)."""
    key = str(Path(path).resolve())
    with _LOCAL_CLIENTS_LOCK:
        entry = _LOCAL_CLIENTS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _LOCAL_CLIENTS[key]
            entry[0].close()


@atexit.register
def _close_local_clients() -> None:
    """Unlock the folders of stores never closed, while the interpreter can still do it
    (qdrant-client's own ``__del__`` at shutdown fails to import its lock library)."""
    with _LOCAL_CLIENTS_LOCK:
        entries = list(_LOCAL_CLIENTS.values())
        _LOCAL_CLIENTS.clear()
    for client, _ in entries:
        try:
            client.close()
        except Exception:  # exiting anyway: the lock goes with the process
            log.debug("closing a qdrant-client local store at exit failed", exc_info=True)


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

    ``location=":memory:"`` runs qdrant-client's in-process local mode (tests); ``path`` runs it
    on a folder that persists (one process at a time, see the module docstring); ``client``
    shares an existing client (e.g. one local-mode client between a writer and a reader in
    tests), which :meth:`close` leaves open. The client is created on first use, so
    constructing a store never touches the network. Searches go to the pinned collection, not
    to the alias, so that a request never meets item vectors of another model run than the one
    the API loaded.
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
        path: str | Path | None = None,
        client: QdrantClient | None = None,
        read_only: bool = False,
        index: IndexConfig | None = None,
    ) -> None:
        if not url and not location and path is None and client is None:
            raise VectorStoreConfigError(
                "A Qdrant server URL is required: set RECSYS_VECTOR_STORE__URL "
                "(e.g. http://localhost:6333), RECSYS_VECTOR_STORE__PATH for qdrant-client's "
                "local mode on a folder (tests, no server), or use "
                "RECSYS_VECTOR_STORE__TYPE=edge."
            )
        super().__init__(collection, read_only=read_only, hnsw_ef=hnsw_ef, index=index)
        self.url = url or None
        self.api_key = api_key
        self.path = None if url or path is None else Path(path)
        self.location = None if url or self.path else location
        self._owns_client = client is None
        if client is not None:
            self._local = isinstance(getattr(client, "_client", None), QdrantLocal)
        else:
            self._local = self.url is None and (self.path is not None or self.location == MEMORY)
        self._client: QdrantClient | None = client
        self._dims: dict[str, int] = {}
        #: seconds between two status reads while :meth:`finalize` waits for indexing
        self.poll_s = 0.0 if self._local else FINALIZE_POLL_S

    def where(self, name: str | None = None) -> str:
        name = name or self._pinned or self.name
        via = f" (alias {self.name!r})" if name != self.name else ""
        at = self.url or self.location or self.path or "a shared client"
        return f"collection {name!r}{via} at {at}"

    @property
    def client(self) -> QdrantClient:
        """The qdrant-client instance, created on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    if self.url:
                        self._client = QdrantClient(url=self.url, api_key=self.api_key)
                    elif self.path is not None:
                        self._client = acquire_local_client(self.path)
                    else:
                        self._client = QdrantClient(location=self.location)
        return self._client

    def close(self) -> None:
        """Close the connection. An in-memory collection lives in its client and survives; a
        ``path`` store lets go of the folder once no store of this process uses it."""
        with self._lock:
            if self._client is None or not self._owns_client:
                return
            if self.path is not None:
                self._client = None
                self._dims.clear()
                release_local_client(self.path)
            elif not self._local:
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
                hnsw_config=qm.HnswConfigDiff(
                    m=self.index.hnsw_m,
                    ef_construct=self.index.hnsw_ef_construct,
                    full_scan_threshold=full_scan_threshold_kb(dim),
                ),
                optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=0),
                quantization_config=quantization_config(self.index),
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
        indexes = [
            (field_name, PAYLOAD_KIND_OF[index.data_type])
            for field_name, index in (self._info(source).payload_schema or {}).items()
            if index.data_type in PAYLOAD_KIND_OF
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
        dim = self._collection_dim(name)
        for batch in point_batches(points, batch_size, dim, self.where(name)):
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
        """Turn indexing on and wait until the server reports the collection green.

        Local mode has no optimizer and is always green: the same loop passes at once there.
        """
        self._call(
            "Enabling indexing",
            lambda: self.client.update_collection(
                name,
                optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=INDEXING_THRESHOLD_KB),
            ),
            name,
        )
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
                time.sleep(self.poll_s)

    # -- reading -----------------------------------------------------------------------------

    def _search(
        self, name: str, vector: Any, k: int, flt: SearchFilter | None, with_payload: bool
    ) -> list[Hit]:
        query = as_vector(vector, self._collection_dim(name), where=self.where(name))
        # Local mode is brute force and warns that search params are ignored: leave them out.
        params = None if self._local else self.search_params(k)
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

    def search_params(self, k: int) -> qm.SearchParams:
        """What a search asks of the server: ``hnsw_ef`` (at least ``k``) and, for a quantized
        store, rescoring and oversampling (ignored by the server for an unquantized
        collection)."""
        quantization = None
        if self.index.quantized:
            quantization = qm.QuantizationSearchParams(
                rescore=self.index.rescore, oversampling=self.index.oversampling
            )
        return qm.SearchParams(hnsw_ef=max(self.hnsw_ef, k), quantization=quantization)

    def _count(self, name: str) -> int:
        result = self._call("Counting", lambda: self.client.count(name, exact=True), name)
        return int(result.count)

    def _address(self) -> dict[str, Any]:
        address: dict[str, Any] = {"url": self.url or self.location}
        if self.path is not None:
            address["path"] = str(self.path)
        return address

    def _describe(self, name: str, out: dict[str, Any]) -> None:
        out["points"] = self._count(name)
        info = self._info(name)
        out.update(
            status=str(getattr(info.status, "value", info.status)),
            indexed_vectors=info.indexed_vectors_count,
            index=self._index_report(name, info),
        )

    def _index_report(self, name: str, info: Any) -> dict[str, Any]:
        """What the server built (its config and payload schema). Local mode reports fixed
        defaults and no payload schema, so there the settings recorded at creation are
        reported, marked ``applied: false``."""
        if self._local:
            recorded = self._metadata(name).get("index")
            if isinstance(recorded, dict):
                return {**recorded, "applied": False}
        hnsw = info.config.hnsw_config
        quantization = None
        scalar = getattr(info.config.quantization_config, "scalar", None)
        if scalar is not None:
            quantization = {
                "type": str(getattr(scalar.type, "value", scalar.type)),
                "quantile": scalar.quantile,
                "always_ram": bool(scalar.always_ram),
            }
        payload = {
            field_name: PAYLOAD_KIND_OF.get(index.data_type, str(index.data_type))
            for field_name, index in (info.payload_schema or {}).items()
        }
        return {
            "hnsw": {"m": hnsw.m, "ef_construct": hnsw.ef_construct},
            "quantization": quantization,
            "payload_indexes": dict(sorted(payload.items())),
            "applied": not self._local,
        }

    def __repr__(self) -> str:
        return (
            f"QdrantServerVectorStore(collection={self.name!r}, "
            f"url={self.url or self.location or self.path!r}, hnsw_ef={self.hnsw_ef}, "
            f"read_only={self.read_only})"
        )
