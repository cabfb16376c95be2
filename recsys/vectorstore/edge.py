"""Vector store backend on qdrant-edge-py: Qdrant's engine in-process, one folder per collection.

It needs no server, reloads from disk in tens of milliseconds and searches its HNSW graph in
well under a millisecond, which makes it the default for local runs and single-node serving.

Quirks of qdrant-edge-py 0.9.0 handled here:

* ``qe.MatchValue(True)`` is stored as the *integer* 1 and then matches no bool payload;
  ``qe.MatchValue(np.bool_(True))`` is kept as a bool, so bools are passed as ``np.bool_``.
* Search results carry no payload unless ``SearchRequest(with_payload=True)``.
* An open shard locks its write-ahead log: a second ``EdgeShard.load`` of the same folder, in
  this or another process, fails with ``WouldBlock`` until the first one is closed.
* Its errors are plain ``Exception`` instances; they are wrapped into :class:`VectorStoreError`.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from recsys.vectorstore.base import (
    DEFAULT_EXACT_BELOW,
    INDEX_HINT,
    INDEXING_THRESHOLD_KB,
    CollectionNotFoundError,
    Hit,
    ItemPoint,
    SearchFilter,
    VectorStore,
    VectorStoreError,
    _point_id,
    as_vector,
    batched,
    check_k,
    clean_payload,
    full_scan_threshold_kb,
)

#: File that qdrant-edge writes when a shard is created; its presence marks a collection folder.
CONFIG_FILE = "edge_config.json"

#: HNSW graph parameters (Qdrant's defaults).
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100


def edge_filter(flt: SearchFilter | None) -> qe.Filter | None:
    """Translate a :class:`SearchFilter` into qdrant-edge's own filter classes."""
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    for key, value in flt.equals.items():
        # np.bool_, not bool: qdrant-edge turns a Python bool into the integer 1 (see above).
        match = qe.MatchValue(np.bool_(value) if isinstance(value, bool) else value)
        must.append(qe.FieldCondition(key, match=match))
    for key, values in flt.any_of.items():
        must.append(qe.FieldCondition(key, match=qe.MatchAny(list(values))))
    for key, (low, high) in flt.ranges.items():
        must.append(qe.FieldCondition(key, range=qe.RangeFloat(gte=low, lte=high)))
    must_not = [qe.HasIdCondition(set(flt.exclude_ids))] if flt.exclude_ids else None
    return qe.Filter(must=must or None, must_not=must_not)


class EdgeVectorStore(VectorStore):
    """A collection stored in ``path`` and searched in-process with qdrant-edge.

    Args:
        path: The collection's folder (created by :meth:`recreate`).
        hnsw_ef: Size of the HNSW candidate list at search time: higher is slower and more exact.
        exact_below: Candidate sets (the collection, or the points passing a filter) smaller
            than this many points are scanned exactly instead of walking the graph.

    The shard is opened lazily on first use and reopened after :meth:`close`, so one object
    can serve for the life of a process. Only one open shard per folder is allowed at a time.
    """

    backend = "edge"

    def __init__(
        self, path: Path, hnsw_ef: int = 64, *, exact_below: int = DEFAULT_EXACT_BELOW
    ) -> None:
        if hnsw_ef < 1:
            raise ValueError(f"hnsw_ef must be >= 1, got {hnsw_ef}")
        self.path = Path(path)
        self.hnsw_ef = int(hnsw_ef)
        self.exact_below = int(exact_below)
        self._shard: qe.EdgeShard | None = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    # -- opening and closing ---------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the folder holds a collection built by :meth:`recreate`."""
        return (self.path / CONFIG_FILE).is_file()

    def _open(self) -> qe.EdgeShard:
        """The open shard, loading it from disk on first use."""
        shard = self._shard
        if shard is not None:
            return shard
        with self._lock:
            if self._shard is None:
                if not self.exists():
                    raise CollectionNotFoundError(
                        f"No vector collection at {self.path}: {INDEX_HINT}."
                    )
                try:
                    self._shard = qe.EdgeShard.load(str(self.path))
                except Exception as exc:  # qdrant-edge raises bare Exception
                    if "WouldBlock" in str(exc):
                        raise VectorStoreError(
                            f"The vector collection at {self.path} is open elsewhere (its "
                            "write-ahead log is locked): close the other process or store first."
                        ) from exc
                    raise VectorStoreError(
                        f"Cannot open the vector collection at {self.path} ({exc}); "
                        f"{INDEX_HINT} again."
                    ) from exc
                self._dim = self._read_dim()
            return self._shard

    def _read_dim(self) -> int | None:
        """Vector size from the shard's config file, used to reject mismatched queries early."""
        try:
            config = json.loads((self.path / CONFIG_FILE).read_text())
            return int(config["vectors"][""]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # the engine still checks dimensions itself

    def close(self) -> None:
        """Flush and close the shard, releasing its lock so another process may open it."""
        with self._lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                try:
                    shard.flush()
                finally:
                    shard.close()

    # -- building ----------------------------------------------------------------------------

    def recreate(
        self,
        dim: int,
        keyword_fields: Sequence[str] = (),
        float_fields: Sequence[str] = (),
        bool_fields: Sequence[str] = (),
    ) -> None:
        """Delete the folder and create an empty collection with payload indexes.

        Refuses to delete a non-empty folder that is not a qdrant-edge collection, so that a
        mistyped path cannot wipe unrelated data.
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.close()
        if self.path.exists():
            if self.path.is_dir() and (self.exists() or not any(self.path.iterdir())):
                shutil.rmtree(self.path)
            else:
                raise VectorStoreError(
                    f"Refusing to delete {self.path}: it is not a qdrant-edge collection folder."
                )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M,
                ef_construct=HNSW_EF_CONSTRUCT,
                full_scan_threshold=full_scan_threshold_kb(self.exact_below, dim),
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
        )
        with self._lock:
            try:
                shard = qe.EdgeShard.create(str(self.path), config)
                for fields, schema in (
                    (keyword_fields, qe.PayloadSchemaType.Keyword),
                    (float_fields, qe.PayloadSchemaType.Float),
                    (bool_fields, qe.PayloadSchemaType.Bool),
                ):
                    for name in fields:
                        shard.update(qe.UpdateOperation.create_field_index(name, schema))
            except Exception as exc:
                raise VectorStoreError(
                    f"Cannot create the vector collection at {self.path}: {exc}"
                ) from exc
            self._shard, self._dim = shard, dim

    def upsert(self, points: Iterable[ItemPoint], batch_size: int = 1024) -> None:
        """Insert or replace points in batches; they are searchable at once (un-indexed)."""
        shard = self._open()
        for batch in batched(points, batch_size):
            edge_points = [
                qe.Point(
                    _point_id(p.id),
                    as_vector(p.vector, self._dim, f"vector of point {p.id}").tolist(),
                    clean_payload(p.payload),
                )
                for p in batch
            ]
            try:
                shard.update(qe.UpdateOperation.upsert_points(edge_points))
            except Exception as exc:
                raise VectorStoreError(f"Upsert into {self.path} failed: {exc}") from exc

    def finalize(self) -> None:
        """Build the HNSW graph and payload indexes (``optimize``), then flush to disk."""
        shard = self._open()
        try:
            shard.optimize()
            shard.flush()
        except Exception as exc:
            raise VectorStoreError(f"Optimising {self.path} failed: {exc}") from exc

    # -- reading -----------------------------------------------------------------------------

    def search(self, vector: Any, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """Top-``k`` points by cosine similarity that pass ``flt``, best first."""
        k = check_k(k)
        shard = self._open()
        query = as_vector(vector, self._dim)
        request = qe.SearchRequest(
            query=qe.Query.Nearest(query.tolist()),
            limit=k,
            filter=edge_filter(flt),
            params=qe.SearchParams(hnsw_ef=max(self.hnsw_ef, k)),
            with_payload=True,
        )
        try:
            points = shard.search(request)
        except Exception as exc:
            if "dimension" in str(exc).lower():
                raise ValueError(f"Search in {self.path}: {exc}") from exc
            raise VectorStoreError(f"Search in {self.path} failed: {exc}") from exc
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def count(self) -> int:
        """Exact number of points."""
        shard = self._open()
        try:
            return int(shard.count(qe.CountRequest(exact=True)))
        except Exception as exc:
            raise VectorStoreError(f"Counting points in {self.path} failed: {exc}") from exc

    def health(self) -> dict[str, Any]:
        """Open the shard if needed and report its size and index state; never raises."""
        out: dict[str, Any] = {"ok": False, "backend": self.backend, "path": str(self.path)}
        try:
            out["points"] = self.count()
            info = self._open().info()
            out.update(
                ok=True,
                dim=self._dim,
                indexed_vectors=int(info.indexed_vectors_count),
                segments=int(info.segments_count),
                hnsw_ef=self.hnsw_ef,
            )
        except Exception as exc:  # a health check reports, it does not raise
            out.setdefault("points", None)
            out["error"] = str(exc)
        return out

    def __repr__(self) -> str:
        return f"EdgeVectorStore(path={str(self.path)!r}, hnsw_ef={self.hnsw_ef})"
