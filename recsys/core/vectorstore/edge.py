"""Vector store backend on qdrant-edge-py: Qdrant's engine in-process, one folder per collection.

It needs no server, reloads from disk in tens of milliseconds and searches its HNSW graph in
well under a millisecond, which makes it the default for local runs and single-node serving.

Layout under the store root (``RECSYS_HOME/qdrant``)::

    items/                      a plain collection from before aliases (still served, see below)
    items__20261122T203000/     one collection per indexed model run (recsys_collection.json
                                beside the engine's files records the run id)
    aliases/items.json          the alias: {"target": ..., "run_id": ..., "history": [...]},
                                replaced atomically (temporary file + os.replace)
    .readers/<host>-<pid>/      private copies that read-only stores search (see below)

qdrant-edge has no aliases; the pointer file is ours. A missing pointer means "the plain
collection of that name", so a data root indexed before aliases keeps working and its collection
becomes the first rollback target.

Several processes, one folder (measured with qdrant-edge-py 0.9.0, 30,000 x 64 collection):

* Tried: process A ``EdgeShard.load(folder)`` and keeps it open; process B loads the same
  folder. B fails at once with ``Exception: Service runtime error: failed to open WAL
  <folder>/wal: Can't init WAL: Kind(WouldBlock)``; a second load in the same process fails the
  same way. ``/proc/locks`` shows an exclusive ``FLOCK`` on the ``wal`` directory, held until
  ``close()``. qdrant-edge has no read-only open, so uvicorn workers cannot share a folder.
* A full copy per process (``shutil.copytree``) works but is slow and big: the engine's files
  are sparse (32 MiB WAL segments, 1 MiB flag files holding a few KB), and Python's copy writes
  them out densely: 455 ms and 170 MB per copy with the WAL, 42 ms and 106 MB without.
* Chosen: ``read_only=True`` stores search a private *hard-linked* copy in
  ``.readers/<host>-<pid>/``: every segment file is a hard link (no data written; a copy only
  where links are impossible), the top-level config is copied (the engine rewrites it on load by
  rename), and the WAL is left out so the engine starts an empty one whose lock belongs to the
  copy. A published collection was flushed and closed by ``recsys index`` before the alias moved,
  so its WAL holds nothing that the segments lack, and with an empty WAL nothing is replayed into
  the shared segment files. Making the copy takes ~2.5 ms, loading it ~30-50 ms (as loading the
  original). Four processes searching four linked copies of one collection at once left every
  original file byte-identical (the engine only rewrites a few flag files in place with the same
  bytes on flush) and the original still loaded afterwards. Copies are deleted on ``close()``;
  each process holds an ``flock`` on ``.readers/<host>-<pid>/lock``, and a reader that can take
  the lock of another process's folder knows that process is gone and deletes its copies.
* A Qdrant server (``vector_store.type=qdrant``) is the other answer: the server owns the files
  and any number of workers or machines query it. Pick it when the index outgrows one machine.

So: ``recsys index`` and ``recsys rollback`` open the store for writing (one process at a time);
an API with several workers opens it with ``read_only=True``, in each worker after the fork
(an open shard must not be inherited). A single process may also open it writable and read it
directly, without a copy, as before; it then cannot open a collection that the indexer still
has open, which is why ``recsys index`` closes the new collection before moving the alias.

Quirks of qdrant-edge-py 0.9.0 handled here:

* ``qe.MatchValue(True)`` is stored as the *integer* 1 and then matches no bool payload;
  ``qe.MatchValue(np.bool_(True))`` is kept as a bool, so bools are passed as ``np.bool_``.
* Search results carry no payload unless ``SearchRequest(with_payload=True)``.
* An open shard locks its write-ahead log (above).
* Its errors are plain ``Exception`` instances; they are wrapped into :class:`VectorStoreError`.

Index settings (``IndexConfig``: payload indexes, HNSW ``m`` / ``ef_construct``, int8 scalar
quantization with its RAM placement, rescoring and oversampling at search) map one to one onto
the engine's own classes (``HnswIndexConfig``, ``ScalarQuantizationConfig``,
``QuantizationSearchParams``); the engine writes them to ``edge_config.json``, which
:meth:`EdgeVectorStore.health` reports back, and builds the quantized vectors (``quantized.*``
in each indexed segment) on :meth:`EdgeVectorStore.finalize`.
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from recsys.core.vectorstore.base import (
    INDEX_HINT,
    INDEXING_THRESHOLD_KB,
    RESERVED_NAMES,
    AliasEntry,
    CollectionNotFoundError,
    Hit,
    IndexConfig,
    ItemPoint,
    SearchFilter,
    VectorStore,
    VectorStoreError,
    as_vector,
    full_scan_threshold_kb,
    point_batches,
    to_hits,
)

log = logging.getLogger(__name__)

#: File that qdrant-edge writes when a shard is created; its presence marks a collection folder.
CONFIG_FILE = "edge_config.json"

#: Our own metadata beside the engine's files (run id, creation time); the engine ignores it.
META_FILE = "recsys_collection.json"

#: The engine's write-ahead log folder, locked by whoever has the shard open.
WAL_DIR = "wal"

#: Alias pointer files live in ``<root>/aliases/<alias>.json`` (a name no collection may take).
ALIASES_DIR = "aliases"

#: Private copies for read-only stores live in ``<root>/.readers/<host>-<pid>/``.
READERS_DIR = ".readers"
READER_LOCK = "lock"

#: The engine's payload index type for each kind that ``VectorStore._create`` names.
PAYLOAD_SCHEMAS = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}
PAYLOAD_KIND_OF = {schema: kind for kind, schema in PAYLOAD_SCHEMAS.items()}


def edge_config(dim: int, index: IndexConfig) -> qe.EdgeConfig:
    """The engine's configuration of a new collection: cosine vectors, HNSW and quantization
    from ``index``, and thresholds low enough that even a small catalogue gets its graph."""
    quantization = None
    if index.quantization == "int8":
        quantization = qe.ScalarQuantizationConfig(
            qe.ScalarType.Int8,
            quantile=index.quantile,
            # Pinned: in RAM whatever happens to the float vectors; Cached: memory-mapped
            memory=qe.Memory.Pinned if index.always_ram else qe.Memory.Cached,
        )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=index.hnsw_m,
            ef_construct=index.hnsw_ef_construct,
            full_scan_threshold=full_scan_threshold_kb(dim),
        ),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
    )


def search_params(hnsw_ef: int, k: int, index: IndexConfig) -> qe.SearchParams:
    """Search parameters: ``hnsw_ef`` (at least ``k``), and for a quantized store whether to
    rescore with the float vectors and how many quantized candidates to fetch first. Sent on
    every search: the engine ignores quantization parameters for a collection without it."""
    quantization = None
    if index.quantized:
        quantization = qe.QuantizationSearchParams(
            rescore=index.rescore, oversampling=index.oversampling
        )
    return qe.SearchParams(hnsw_ef=max(hnsw_ef, k), quantization=quantization)


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


# -- private copies for read-only stores --------------------------------------------------------


def link_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a readable copy of the collection in ``src`` without copying its data.

    Segment files become hard links (copies where the filesystem refuses links), top-level files
    are copied, and the write-ahead log is left out: see the module docstring for why this is
    safe for a published collection and what was measured.
    """
    partial = dst.with_name(dst.name + ".partial")
    for stale in (partial, dst):
        shutil.rmtree(stale, ignore_errors=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        top = rel == Path(".")
        if top:
            dirnames[:] = [d for d in dirnames if d != WAL_DIR]
        (partial / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            source, target = Path(dirpath) / name, partial / rel / name
            if top:
                shutil.copy2(source, target)
                continue
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    (partial / WAL_DIR).mkdir(exist_ok=True)
    partial.rename(dst)


_READER_DIRS: dict[tuple[str, int], tuple[Path, int]] = {}
_READER_DIRS_LOCK = threading.Lock()
_COPY_IDS = itertools.count(1)


def reader_dir(root: Path) -> Path:
    """This process's folder for private copies under ``root``, locked while the process lives.

    The first call in a process also deletes the folders of processes that are gone.
    """
    key = (str(Path(root).resolve()), os.getpid())
    with _READER_DIRS_LOCK:
        known = _READER_DIRS.get(key)
        if known is not None:
            return known[0]
        base = Path(root) / READERS_DIR
        base.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
        name = f"{host}-{os.getpid()}"
        remove_stale_readers(base, keep=name)
        mine = base / name
        shutil.rmtree(mine, ignore_errors=True)  # a dead process that had our pid
        # Lock before the folder gets its final name, so no cleaner ever sees it unlocked.
        building = base / f".{name}.{threading.get_ident()}.partial"
        building.mkdir()
        fd = os.open(building / READER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        building.rename(mine)
        _READER_DIRS[key] = (mine, fd)
        return mine


def remove_stale_readers(base: Path, keep: str | None = None) -> list[Path]:
    """Delete the copy folders under ``base`` whose process is gone (their lock is free)."""
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name == keep or not entry.is_dir():
            continue
        if entry.name.startswith("."):  # being set up by another process, or left half-done
            try:
                if time.time() - entry.stat().st_mtime > 60:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            except FileNotFoundError:
                pass
            continue
        try:
            fd = os.open(entry / READER_LOCK, os.O_RDWR)
        except OSError:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its process is alive
        finally:
            os.close(fd)  # also releases the lock if we took it
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@atexit.register
def _remove_own_reader_dirs() -> None:
    pid = os.getpid()
    for (_, owner), (path, fd) in list(_READER_DIRS.items()):
        if owner == pid:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)


# -- one collection folder ----------------------------------------------------------------------


class EdgeCollection:
    """One qdrant-edge shard folder, loaded lazily, optionally through a private copy.

    ``copy_to``: load a hard-linked copy made there instead of ``path`` (read-only stores); the
    copy is made on every open and deleted on :meth:`close`.
    """

    def __init__(self, path: Path, copy_to: Path | None = None) -> None:
        self.path = Path(path)
        self.copy_to = copy_to
        self.dim: int | None = None
        self._shard: qe.EdgeShard | None = None
        self._lock = threading.Lock()

    def open(self) -> qe.EdgeShard:
        """The open shard, loading it from disk (or from a fresh private copy) on first use."""
        shard = self._shard
        if shard is not None:
            return shard
        with self._lock:
            if self._shard is None:
                if not (self.path / CONFIG_FILE).is_file():
                    raise CollectionNotFoundError(
                        f"No vector collection at {self.path}: {INDEX_HINT}."
                    )
                load_from = self.path
                if self.copy_to is not None:
                    try:
                        link_copy(self.path, self.copy_to)
                    except OSError as exc:
                        raise VectorStoreError(
                            f"Cannot make a private copy of {self.path} in {self.copy_to} "
                            f"({exc}): check free space and permissions there."
                        ) from exc
                    load_from = self.copy_to
                try:
                    self._shard = qe.EdgeShard.load(str(load_from))
                except Exception as exc:  # qdrant-edge raises bare Exception
                    self._remove_copy()
                    if "WouldBlock" in str(exc):
                        raise VectorStoreError(
                            f"The vector collection at {self.path} is open elsewhere (its "
                            "write-ahead log is locked): close the other process or store "
                            "first, or open the store with read_only=True (a private copy per "
                            "process)."
                        ) from exc
                    raise VectorStoreError(
                        f"Cannot open the vector collection at {self.path} ({exc}); "
                        f"{INDEX_HINT} again."
                    ) from exc
                self.dim = self._read_dim(load_from)
            return self._shard

    @staticmethod
    def _read_dim(folder: Path) -> int | None:
        """Vector size from the shard's config file, used to reject mismatched queries early."""
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            return int(config["vectors"][""]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # the engine still checks dimensions itself

    def close(self) -> None:
        """Flush and close the shard, releasing its lock; delete the private copy if any."""
        with self._lock:
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    try:
                        shard.flush()
                    finally:
                        shard.close()
            finally:
                self._remove_copy()

    def _remove_copy(self) -> None:
        if self.copy_to is not None:
            shutil.rmtree(self.copy_to, ignore_errors=True)

    def create(
        self, dim: int, indexes: Sequence[tuple[str, str]], index: IndexConfig | None = None
    ) -> None:
        """Create the shard with payload indexes (``(field, kind)`` pairs), HNSW and
        quantization settings (``index``) in a folder that is missing or empty.

        Refuses a non-empty folder, so that a mistyped path cannot clobber unrelated data.
        """
        self.close()
        if self.path.exists():
            if self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()
            else:
                raise VectorStoreError(
                    f"Refusing to delete {self.path}: it is not a qdrant-edge collection folder."
                )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config = edge_config(dim, index or IndexConfig())
        with self._lock:
            try:
                shard = qe.EdgeShard.create(str(self.path), config)
                for name, kind in indexes:
                    shard.update(qe.UpdateOperation.create_field_index(name, PAYLOAD_SCHEMAS[kind]))
            except Exception as exc:
                raise VectorStoreError(
                    f"Cannot create the vector collection at {self.path}: {exc}"
                ) from exc
            self._shard, self.dim = shard, dim

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Report the engine's bare ``Exception`` as "``what`` <folder> failed: ..."."""
        try:
            yield
        except Exception as exc:
            raise VectorStoreError(f"{what} {self.path} failed: {exc}") from exc


# -- the store: collections and aliases under one root ------------------------------------------


class EdgeVectorStore(VectorStore):
    """Collections and aliases under ``path.parent``, opened on the name ``path.name``.

    ``path`` is ``<root>/<name>``: the folder of a plain collection, or where one named like the
    alias would be (``RECSYS_HOME/qdrant/items``); collections and the ``aliases`` folder live
    beside it. ``read_only=True`` refuses writes and searches a private hard-linked copy, so that
    any number of processes can serve the same collections (see the module docstring).

    Shards are opened lazily and reopened after :meth:`close`, so one object can serve for the
    life of a process. Without ``read_only`` only one process may have a collection open.
    """

    backend = "edge"

    def __init__(
        self,
        path: Path,
        hnsw_ef: int = 64,
        *,
        read_only: bool = False,
        index: IndexConfig | None = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(self.path.name, read_only=read_only, hnsw_ef=hnsw_ef, index=index)
        self.root = self.path.parent
        self._handles: dict[str, EdgeCollection] = {}

    # -- collections ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Folders under the root that hold a qdrant-edge collection."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".")
            and p.name not in RESERVED_NAMES
            and (p / CONFIG_FILE).is_file()
        )

    def collection_exists(self, name: str) -> bool:
        return (self.root / name / CONFIG_FILE).is_file()

    def _create(
        self, name: str, dim: int, indexes: Sequence[tuple[str, str]], metadata: dict[str, Any]
    ) -> None:
        with self._lock:
            self._handle(name).create(dim, indexes, self.index)
            _write_json(self.root / name / META_FILE, metadata)

    def _drop(self, name: str) -> None:
        with self._lock:
            handle = self._handles.pop(name, None)
            if self._pinned == name:
                self._pinned = None
            if handle is not None:
                handle.close()
        path = self.root / name
        if not (path / CONFIG_FILE).is_file():
            raise VectorStoreError(
                f"Refusing to delete {path}: it is not a qdrant-edge collection folder."
            )
        # Rename first: nobody sees a half-deleted folder as a collection.
        trash = self.root / f".deleting-{name}-{os.getpid()}-{threading.get_ident()}"
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _metadata(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.root / name / META_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- aliases -------------------------------------------------------------------------------

    def _alias_file(self, alias: str) -> Path:
        return self.root / ALIASES_DIR / f"{alias}.json"

    def list_aliases(self) -> dict[str, str]:
        out = {}
        for path in sorted((self.root / ALIASES_DIR).glob("*.json")):
            history = self._read_alias(path.stem)
            if history:
                out[path.stem] = history[-1].collection
        return out

    def _read_alias(self, alias: str) -> list[AliasEntry] | None:
        path = self._alias_file(alias)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise VectorStoreError(
                f"Cannot read the alias file {path} ({exc}): fix it, or delete it to fall back "
                f"to the plain collection {alias!r}."
            ) from exc
        try:
            history = [AliasEntry.from_json(e) for e in data.get("history") or []]
            target = data["target"]
            if not isinstance(target, str):
                raise ValueError(f"target must be a collection name, got {target!r}")
        except (AttributeError, KeyError, ValueError) as exc:
            raise VectorStoreError(
                f'The alias file {path} is malformed ({exc}): it needs a "target" collection '
                'name and a "history" list; fix it or delete it.'
            ) from exc
        return self._ending_at(history, target)

    def _write_alias(self, alias: str, history: list[AliasEntry]) -> None:
        target = history[-1]
        _write_json(
            self._alias_file(alias),
            {
                "alias": alias,
                "target": target.collection,
                "run_id": target.run_id,
                "history": [entry.to_json() for entry in history],
            },
        )

    @contextmanager
    def _alias_lock(self, alias: str) -> Iterator[None]:
        """An ``flock`` on ``aliases/.<alias>.lock``: concurrent index or rollback jobs queue."""
        folder = self.root / ALIASES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f".{alias}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- open collections ----------------------------------------------------------------------

    def _handle(self, name: str) -> EdgeCollection:
        """The (lazily opened) collection ``name``, shared by reads and writes in this store."""
        handle = self._handles.get(name)
        if handle is None:
            with self._lock:
                handle = self._handles.get(name)
                if handle is None:
                    copy_to = None
                    if self.read_only:
                        copy_to = reader_dir(self.root) / f"{name}.{next(_COPY_IDS)}"
                    handle = EdgeCollection(self.root / name, copy_to)
                    self._handles[name] = handle
        return handle

    def where(self, name: str | None = None) -> str:
        return f"collection at {self.path if name is None else self.root / name}"

    def close(self) -> None:
        """Close every open shard (deleting private copies); the pinned collection is kept."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            try:
                handle.close()
            except Exception:  # e.g. its folder was pruned meanwhile: only worth a log line
                log.warning("closing the vector collection %s failed", handle.path, exc_info=True)

    # -- reading and writing -------------------------------------------------------------------

    def _upsert(self, points: Iterable[ItemPoint], batch_size: int, name: str) -> None:
        """Insert or replace points in batches; they are searchable at once (un-indexed)."""
        handle = self._handle(name)
        shard = handle.open()
        for batch in point_batches(points, batch_size, handle.dim, self.where(name)):
            with handle.errors("Upsert into"):
                shard.update(qe.UpdateOperation.upsert_points([qe.Point(*p) for p in batch]))

    def _finalize(self, name: str) -> None:
        """Build the HNSW graph and payload indexes (``optimize``), then flush to disk."""
        handle = self._handle(name)
        shard = handle.open()
        with handle.errors("Optimising"):
            shard.optimize()
            shard.flush()

    def _search(
        self, name: str, vector: Any, k: int, flt: SearchFilter | None, with_payload: bool
    ) -> list[Hit]:
        handle = self._handle(name)
        shard = handle.open()
        request = qe.SearchRequest(
            query=qe.Query.Nearest(as_vector(vector, handle.dim, where=self.where(name)).tolist()),
            limit=k,
            filter=edge_filter(flt),
            params=search_params(self.hnsw_ef, k, self.index),
            with_payload=with_payload,
        )
        try:
            points = shard.search(request)
        except Exception as exc:
            if "dimension" in str(exc).lower():
                raise ValueError(f"Search in the {self.where(name)}: {exc}") from exc
            raise VectorStoreError(f"Search in {handle.path} failed: {exc}") from exc
        return to_hits(points, with_payload)

    def _count(self, name: str) -> int:
        handle = self._handle(name)
        shard = handle.open()
        with handle.errors("Counting points in"):
            return int(shard.count(qe.CountRequest(exact=True)))

    def _address(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def _describe(self, name: str, out: dict[str, Any]) -> None:
        handle = self._handle(name)
        out["path"] = str(handle.path)
        out["points"] = self._count(name)
        shard = handle.open()
        with handle.errors("Reading"):
            info = shard.info()
        out.update(
            dim=handle.dim,
            indexed_vectors=int(info.indexed_vectors_count),
            segments=int(info.segments_count),
            index=self._index_report(handle, info),
        )

    @staticmethod
    def _index_report(handle: EdgeCollection, info: Any) -> dict[str, Any]:
        """What the engine built: its payload schema and the configuration it persisted."""
        try:
            config = json.loads((handle.path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            config = {}
        hnsw = config.get("hnsw_config") or {}
        scalar = (config.get("quantization_config") or {}).get("scalar")
        quantization = None
        if scalar:
            quantization = {
                "type": scalar.get("type"),
                "quantile": scalar.get("quantile"),
                "always_ram": scalar.get("memory") == "pinned" or bool(scalar.get("always_ram")),
            }
        payload = {
            name: PAYLOAD_KIND_OF.get(index.data_type, str(index.data_type))
            for name, index in info.payload_schema.items()
        }
        return {
            "hnsw": {"m": hnsw.get("m"), "ef_construct": hnsw.get("ef_construct")},
            "quantization": quantization,
            "payload_indexes": dict(sorted(payload.items())),
            "applied": True,
        }

    def __repr__(self) -> str:
        return (
            f"EdgeVectorStore(path={str(self.path)!r}, hnsw_ef={self.hnsw_ef}, "
            f"read_only={self.read_only})"
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
