"""Vector store backend on a Qdrant server through qdrant-client.

Use it when several serving processes or machines share one index, or when the catalogue
outgrows one node. ``location=":memory:"`` runs the same client calls against qdrant-client's
local mode, so tests exercise this module without a server; local mode is a brute-force scan in
Python, so it is exact but slow and meant for tests only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from recsys.vectorstore.base import (
    DEFAULT_EXACT_BELOW,
    INDEX_HINT,
    INDEXING_THRESHOLD_KB,
    CollectionNotFoundError,
    Hit,
    ItemPoint,
    SearchFilter,
    VectorStore,
    VectorStoreConfigError,
    VectorStoreError,
    _point_id,
    as_vector,
    batched,
    check_k,
    clean_payload,
    full_scan_threshold_kb,
)

T = TypeVar("T")

MEMORY = ":memory:"


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
    """A collection on a Qdrant server (``url``) or in qdrant-client's memory (``location``).

    Args:
        collection: Collection name on the server.
        url: Server URL, e.g. ``http://localhost:6333``.
        api_key: Server API key, if the server requires one.
        location: ``":memory:"`` for qdrant-client's in-process local mode (tests).
        hnsw_ef: Size of the HNSW candidate list at search time.
        exact_below: Same meaning as for the edge backend: smaller candidate sets are scanned.
        finalize_timeout_s: How long :meth:`finalize` waits for the server to finish indexing.

    The client is created on first use, so constructing a store never touches the network.
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
        exact_below: int = DEFAULT_EXACT_BELOW,
        finalize_timeout_s: float = 600.0,
    ) -> None:
        if not url and not location:
            raise VectorStoreConfigError(
                "A Qdrant server URL is required: set RECSYS_VECTOR_STORE__URL "
                "(e.g. http://localhost:6333), or use RECSYS_VECTOR_STORE__TYPE=edge."
            )
        if hnsw_ef < 1:
            raise ValueError(f"hnsw_ef must be >= 1, got {hnsw_ef}")
        self.collection = collection
        self.url = url or None
        self.api_key = api_key
        self.location = None if url else location
        self.hnsw_ef = int(hnsw_ef)
        self.exact_below = int(exact_below)
        self.finalize_timeout_s = finalize_timeout_s
        self._local = self.url is None and self.location == MEMORY
        self._client: QdrantClient | None = None
        self._dim: int | None = None

    @property
    def where(self) -> str:
        """Human-readable address of the collection, used in messages."""
        return f"collection {self.collection!r} at {self.url or self.location}"

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
        if self._client is not None and not self._local:
            self._client.close()
            self._client = None

    # -- error handling ----------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
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
                self._dim = None
                raise CollectionNotFoundError(f"No vector {self.where}: {INDEX_HINT}.") from exc
            raise VectorStoreError(f"{what} on {self.where} failed: {exc}") from exc

    def _collection_dim(self) -> int:
        """Vector size of the collection, fetched once; also proves that it exists."""
        if self._dim is None:
            info = self._call("Reading", lambda: self.client.get_collection(self.collection))
            vectors = info.config.params.vectors
            if not isinstance(vectors, qm.VectorParams):
                raise VectorStoreError(f"The {self.where} does not have one unnamed vector.")
            self._dim = int(vectors.size)
        return self._dim

    # -- building ----------------------------------------------------------------------------

    def recreate(
        self,
        dim: int,
        keyword_fields: Sequence[str] = (),
        float_fields: Sequence[str] = (),
        bool_fields: Sequence[str] = (),
    ) -> None:
        """Drop and create the collection with indexing paused until :meth:`finalize`.

        ``indexing_threshold=0`` during the bulk load is Qdrant's advice for fast uploads: the
        graph is built once at the end rather than re-built as segments fill up.
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        client = self.client

        def create() -> None:
            if client.collection_exists(self.collection):
                client.delete_collection(self.collection)
            client.create_collection(
                self.collection,
                vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
                hnsw_config=qm.HnswConfigDiff(
                    full_scan_threshold=full_scan_threshold_kb(self.exact_below, dim)
                ),
                optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=0),
            )
            for fields, schema in (
                (keyword_fields, qm.PayloadSchemaType.KEYWORD),
                (float_fields, qm.PayloadSchemaType.FLOAT),
                (bool_fields, qm.PayloadSchemaType.BOOL),
            ):
                for name in fields:
                    with warnings.catch_warnings():
                        # Local mode warns that payload indexes have no effect there.
                        if self._local:
                            warnings.simplefilter("ignore", UserWarning)
                        client.create_payload_index(
                            self.collection, name, field_schema=schema, wait=True
                        )

        self._call("Creating", create)
        self._dim = dim

    def upsert(self, points: Iterable[ItemPoint], batch_size: int = 1024) -> None:
        """Insert or replace points in batches, waiting for each batch to be applied."""
        dim = self._collection_dim()
        for batch in batched(points, batch_size):
            structs = [
                qm.PointStruct(
                    id=_point_id(p.id),
                    vector=as_vector(p.vector, dim, f"vector of point {p.id}").tolist(),
                    payload=clean_payload(p.payload),
                )
                for p in batch
            ]
            self._call(
                "Upsert",
                lambda structs=structs: self.client.upsert(
                    self.collection, points=structs, wait=True
                ),
            )

    def finalize(self) -> None:
        """Turn indexing on and wait until the server reports the collection green."""
        self._call(
            "Enabling indexing",
            lambda: self.client.update_collection(
                self.collection,
                optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=INDEXING_THRESHOLD_KB),
            ),
        )
        if self._local:
            return  # local mode has no optimizer: everything is searchable at once
        deadline = time.monotonic() + self.finalize_timeout_s
        greens = 0
        # The optimizer starts asynchronously: ask for green twice in a row to avoid reading
        # the status before it has switched to yellow.
        while greens < 2:
            info = self._call("Reading", lambda: self.client.get_collection(self.collection))
            greens = greens + 1 if info.status == qm.CollectionStatus.GREEN else 0
            if greens < 2:
                if time.monotonic() > deadline:
                    raise VectorStoreError(
                        f"The {self.where} is still {info.status} after "
                        f"{self.finalize_timeout_s:.0f} s of indexing."
                    )
                time.sleep(0.5)

    # -- reading -----------------------------------------------------------------------------

    def search(self, vector: Any, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """Top-``k`` points by cosine similarity that pass ``flt``, best first."""
        k = check_k(k)
        query = as_vector(vector, self._collection_dim())
        # Local mode is brute force and warns that search params are ignored: leave them out.
        params = None if self._local else qm.SearchParams(hnsw_ef=max(self.hnsw_ef, k))
        response = self._call(
            "Search",
            lambda: self.client.query_points(
                self.collection,
                query=query.tolist(),
                limit=k,
                query_filter=server_filter(flt),
                search_params=params,
                with_payload=True,
            ),
        )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def count(self) -> int:
        """Exact number of points."""
        result = self._call("Counting", lambda: self.client.count(self.collection, exact=True))
        return int(result.count)

    def health(self) -> dict[str, Any]:
        """Reach the server and describe the collection; never raises."""
        out: dict[str, Any] = {
            "ok": False,
            "backend": self.backend,
            "url": self.url or self.location,
            "collection": self.collection,
        }
        try:
            out["points"] = self.count()
            info = self._call("Reading", lambda: self.client.get_collection(self.collection))
            out.update(
                ok=True,
                status=str(getattr(info.status, "value", info.status)),
                indexed_vectors=info.indexed_vectors_count,
                hnsw_ef=self.hnsw_ef,
            )
        except Exception as exc:  # a health check reports, it does not raise
            out.setdefault("points", None)
            out["error"] = str(exc)
        return out

    def __repr__(self) -> str:
        return (
            f"QdrantServerVectorStore(collection={self.collection!r}, "
            f"url={self.url or self.location!r}, hnsw_ef={self.hnsw_ef})"
        )
