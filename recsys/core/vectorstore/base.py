"""The vector store interface shared by every backend.

Serving and indexing talk to item vectors through :class:`VectorStore` only, so that the
in-process engine (``edge``) used on a laptop and a Qdrant server used in production are
interchangeable by configuration, the way Feast picks its online store per module. Each backend
must give the same answers for the same data: cosine similarity as the score (higher is better),
the same filter semantics and the payload of every hit.

Serving must switch to a new index without a restart, and back when a new model is bad. Like
Qdrant's collection aliases, a store tells *collections* (one per model run, never rewritten once
published: ``items__20261122T203000``) from *aliases* (``items``, the configured name) that point
at one of them. ``recsys index`` builds a new collection and then moves the alias in one atomic
step; a store pins the collection the alias pointed at when it was first used and keeps it, so
that a request never mixes one run's user tower with another run's item vectors: the API opens a
new store (and loads the matching model) when the alias moves. The alias remembers its targets
and their model runs, so that ``recsys rollback`` can move it back and say which model to serve.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

#: What to tell a user whose collection is missing or unreadable.
INDEX_HINT = "run `recsys index` to build it"

#: Segments bigger than this (KB) get an HNSW graph. Qdrant's default (~10 MB) would leave a
#: catalogue of a few thousand items un-indexed, so its serving path would never be exercised.
INDEXING_THRESHOLD_KB = 1

#: A search whose candidate set (the whole collection, or the points that pass the filter) is
#: smaller than this many points is scanned exactly, on both backends. A scan of 1,000
#: vectors takes tens of microseconds and is never wrong, whereas filtered HNSW loses recall on
#: narrow filters; larger candidate sets go through the graph.
EXACT_BELOW = 1_000

#: HNSW graph parameters when nothing is configured (Qdrant's defaults).
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100

#: Payload index kinds, as ``VectorStore._create`` names them: ``keyword`` for categorical
#: fields, ``integer`` / ``float`` for numbers (range filters), ``bool`` for flags.
PAYLOAD_KINDS = ("keyword", "integer", "float", "bool")


class VectorStoreError(RuntimeError):
    """A vector store could not do what was asked; the message says what to do about it."""


class CollectionNotFoundError(VectorStoreError):
    """The collection has not been built (or was deleted): it must be indexed first."""


class VectorStoreConfigError(VectorStoreError, ValueError):
    """The vector store settings are incomplete or inconsistent."""


class AliasError(VectorStoreError):
    """An alias cannot be moved as asked (nothing to roll back to, a live collection...)."""


class ReadOnlyStoreError(VectorStoreError):
    """A store opened with ``read_only=True`` (serving) was asked to write."""


@dataclass(frozen=True)
class IndexConfig:
    """How a store builds a new collection: payload indexes, HNSW graph, quantization.

    One backend-neutral description (built from ``VectorStoreSettings``) that each backend turns
    into its own classes, so that an edge folder and a server collection built from the same
    settings are indexed the same way. A collection keeps what it was built with: these apply
    to :meth:`VectorStore.create_collection` (``recsys index``), not to existing collections;
    ``rescore`` / ``oversampling`` apply to every search of a quantized collection.

    Attributes:
        payload_indexes: field -> kind (:data:`PAYLOAD_KINDS`), created with every collection in
            addition to the fields the caller names.
        hnsw_m: edges per node of the HNSW graph (more: better recall, more memory).
        hnsw_ef_construct: candidate list while building the graph (more: better graph,
            slower build).
        quantization: ``"int8"`` keeps a scalar-quantized copy of the vectors (4x smaller) that
            searches scan first; ``"none"`` (default) searches the float vectors only.
        quantile: share of values that sets the int8 range (outliers beyond are clipped).
        always_ram: keep the quantized vectors in RAM (the float originals may stay on disk).
        rescore: re-score the quantized candidates with the float vectors, so scores stay the
            exact cosine similarity (the contract every backend keeps); off trades that for
            speed.
        oversampling: fetch ``oversampling * k`` quantized candidates before rescoring.
    """

    payload_indexes: Mapping[str, str] = field(default_factory=dict)
    hnsw_m: int = HNSW_M
    hnsw_ef_construct: int = HNSW_EF_CONSTRUCT
    quantization: Literal["none", "int8"] = "none"
    quantile: float | None = 0.99
    always_ram: bool = True
    rescore: bool = True
    oversampling: float | None = 2.0

    def __post_init__(self) -> None:
        indexes = {}
        for name, kind in dict(self.payload_indexes).items():
            if kind not in PAYLOAD_KINDS:
                raise VectorStoreConfigError(
                    f"Payload index {name!r} has kind {kind!r}: use one of {list(PAYLOAD_KINDS)}."
                )
            indexes[str(name)] = kind
        object.__setattr__(self, "payload_indexes", indexes)
        if self.hnsw_m < 4 or self.hnsw_ef_construct < 4:
            raise VectorStoreConfigError(
                f"HNSW m ({self.hnsw_m}) and ef_construct ({self.hnsw_ef_construct}) must be >= 4."
            )
        if self.quantization not in ("none", "int8"):
            raise VectorStoreConfigError(
                f"Unknown quantization {self.quantization!r}: use 'none' or 'int8'."
            )
        if self.quantile is not None and not 0.5 <= self.quantile <= 1.0:
            raise VectorStoreConfigError(f"quantile must be in [0.5, 1], got {self.quantile}")
        if self.oversampling is not None and self.oversampling < 1.0:
            raise VectorStoreConfigError(f"oversampling must be >= 1, got {self.oversampling}")

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    def describe(self, payload_indexes: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The ``index`` entry of :meth:`VectorStore.health`, in the form every backend reports
        (``payload_indexes`` overrides this config's, e.g. with the fields a caller added)."""
        indexes = self.payload_indexes if payload_indexes is None else payload_indexes
        quantization = None
        if self.quantized:
            quantization = {
                "type": self.quantization,
                "quantile": self.quantile,
                "always_ram": self.always_ram,
            }
        return {
            "hnsw": {"m": self.hnsw_m, "ef_construct": self.hnsw_ef_construct},
            "quantization": quantization,
            "payload_indexes": dict(sorted(indexes.items())),
        }


@dataclass(frozen=True)
class ItemPoint:
    """One item to index: its integer id, its embedding and the payload that filters read.

    Payload values may be ``str``, ``int``, ``float`` or ``bool`` (numpy scalars are converted).
    """

    id: int
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchFilter:
    """Conditions that every hit must satisfy; all of them are combined with AND.

    Attributes:
        equals: payload field == value, for keyword, integer or bool fields. Floats are refused
            because exact float equality is rarely what a caller means; use ``ranges``.
        any_of: payload field is one of the listed values (an empty list matches nothing).
        ranges: ``(gte, lte)`` bounds on numeric fields, either side may be ``None``.
        exclude_ids: point ids that must not come back (e.g. items the user already bought).

    Values are validated here rather than in each backend, so that a mistake such as
    ``any_of={"colour": "red"}`` (a string, which would iterate as characters) fails the same
    way everywhere and early.
    """

    equals: Mapping[str, str | int | bool] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    exclude_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        equals = {}
        for key, value in self.equals.items():
            value = _py_scalar(value)
            if not isinstance(value, str | int | bool):
                raise TypeError(
                    f"SearchFilter.equals[{key!r}] must be str, int or bool, got "
                    f"{type(value).__name__}; use ranges= for float fields"
                )
            equals[key] = value
        any_of = {}
        for key, values in self.any_of.items():
            if isinstance(values, str | bytes) or not isinstance(values, Iterable):
                raise TypeError(
                    f"SearchFilter.any_of[{key!r}] must be a list of values, got {values!r}"
                )
            items = tuple(_py_scalar(v) for v in values)
            if not all(isinstance(v, str) for v in items) and not all(
                isinstance(v, int) and not isinstance(v, bool) for v in items
            ):
                raise TypeError(
                    f"SearchFilter.any_of[{key!r}] must hold only strings or only integers"
                )
            any_of[key] = items
        ranges = {}
        for key, bounds in self.ranges.items():
            if not isinstance(bounds, Sequence) or len(bounds) != 2:
                raise TypeError(f"SearchFilter.ranges[{key!r}] must be a (gte, lte) pair")
            low, high = (None if b is None else float(b) for b in bounds)
            if low is not None and high is not None and low > high:
                raise ValueError(f"SearchFilter.ranges[{key!r}] has gte {low} > lte {high}")
            ranges[key] = (low, high)
        object.__setattr__(self, "equals", equals)
        object.__setattr__(self, "any_of", any_of)
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "exclude_ids", frozenset(_point_id(i) for i in self.exclude_ids))

    def is_empty(self) -> bool:
        """True when the filter lets every point through."""
        return not (self.equals or self.any_of or self.ranges or self.exclude_ids)


@dataclass(frozen=True)
class Hit:
    """One search result: point id, cosine similarity (higher is better) and payload."""

    id: int
    score: float
    payload: dict[str, Any]


#: Between an alias and a run id in a physical collection's name: ``items__20261122T203000``.
RUN_SEPARATOR = "__"

#: Collection and alias names become folders (edge) or URL segments (server): keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Folder names the edge backend keeps for itself under its root.
RESERVED_NAMES = frozenset({"aliases"})

#: How many moves an alias remembers; older entries (rollback targets) are forgotten.
MAX_HISTORY = 50

#: ``prune`` leaves alone a collection that no alias ever pointed at for this long after its
#: creation: it may be another ``recsys index`` job still filling it.
PRUNE_MIN_AGE_S = 600.0


def check_name(name: str, what: str = "collection") -> str:
    """Validate a collection or alias name, so it is safe as a folder and as a URL segment."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name or len(name) > 200:
        raise VectorStoreConfigError(
            f"Invalid {what} name {name!r}: use letters, digits, '_', '-' and '.' (starting "
            "with a letter or digit, at most 200 characters)."
        )
    if name in RESERVED_NAMES:
        raise VectorStoreConfigError(
            f"{name!r} is reserved for the store's own files: choose another {what} name."
        )
    return name


def safe_run_id(run_id: str) -> str:
    """A model run id as it may appear in a collection name (other characters become '-')."""
    safe = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]", "-", str(run_id))).strip("._-")
    if not safe:
        raise ValueError(f"run id {run_id!r} has no letter or digit to name a collection with")
    return safe


def collection_name(alias: str, run_id: str) -> str:
    """The physical collection that ``recsys index`` builds for a model run behind ``alias``."""
    return check_name(f"{alias}{RUN_SEPARATOR}{safe_run_id(run_id)}")


def now_iso() -> str:
    """Current UTC time, to the second, as recorded in alias histories and collection metadata."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AliasEntry:
    """One move of an alias: the collection it pointed at, that collection's model run, when.

    ``at`` is ``None`` for a plain pre-alias collection adopted as the first entry.
    """

    collection: str
    run_id: str | None = None
    at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"collection": self.collection, "run_id": self.run_id, "at": self.at}

    @classmethod
    def from_json(cls, data: Any) -> AliasEntry:
        if not isinstance(data, Mapping) or not isinstance(data.get("collection"), str):
            raise ValueError(f"not an alias history entry: {data!r}")
        run_id, at = data.get("run_id"), data.get("at")
        return cls(
            data["collection"],
            None if run_id is None else str(run_id),
            None if at is None else str(at),
        )


class VectorStore(ABC):
    """Item vectors in named collections, searched by cosine similarity, behind aliases.

    A store is opened on one ``name``: an alias (``items``, the configured name) or a plain
    collection. Reads and writes without ``collection=`` go to the collection that the name
    resolved to on first use (:attr:`current_collection`), for the life of the store, so the
    vectors it searches always match the model that was loaded with them. Writers build a new
    collection and publish it::

        store.create_collection(name, dim, keyword_fields=..., run_id=run_id)
        store.upsert(points, collection=name)
        store.finalize(collection=name)
        previous = store.set_alias("items", name)   # atomic; new stores open the new target
        store.prune("items", keep=3)                 # drop collections nobody can roll back to

    Stores opened with ``read_only=True`` refuse every write; on the edge backend they also
    search a private copy, so that several processes can serve from one folder.
    """

    backend: str = "abstract"

    def __init__(
        self,
        name: str,
        *,
        read_only: bool = False,
        hnsw_ef: int = 64,
        index: IndexConfig | None = None,
    ) -> None:
        """``hnsw_ef``: size of the HNSW candidate list at search time (slower, more exact);
        ``index``: how :meth:`create_collection` builds collections (default: no extra payload
        index, Qdrant's HNSW defaults, no quantization)."""
        if hnsw_ef < 1:
            raise ValueError(f"hnsw_ef must be >= 1, got {hnsw_ef}")
        self.name = name
        self.read_only = bool(read_only)
        self.hnsw_ef = int(hnsw_ef)
        self.index = index or IndexConfig()
        self._pinned: str | None = None
        self._lock = threading.RLock()

    # -- backend primitives ----------------------------------------------------------------

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Names of the physical collections, sorted (aliases are not listed)."""

    @abstractmethod
    def list_aliases(self) -> dict[str, str]:
        """Every alias and the collection it points at."""

    def collection_exists(self, name: str) -> bool:
        """Whether a physical collection (not an alias) of that name exists."""
        return name in self.list_collections()

    @abstractmethod
    def _create(
        self, name: str, dim: int, indexes: Sequence[tuple[str, str]], metadata: dict[str, Any]
    ) -> None:
        """Create an empty collection (the name is free) and store ``metadata`` with it.

        ``indexes``: ``(field, kind)`` pairs, ``kind`` one of :data:`PAYLOAD_KINDS`, in the
        order the payload indexes are to be created. HNSW and quantization come from
        :attr:`index`.
        """

    @abstractmethod
    def _drop(self, name: str) -> None:
        """Delete a collection that no alias points at, closing it first if this store has it."""

    @abstractmethod
    def _metadata(self, name: str) -> dict[str, Any]:
        """What :meth:`create_collection` stored with the collection (empty if unknown)."""

    @abstractmethod
    def _read_alias(self, alias: str) -> list[AliasEntry] | None:
        """The alias history, oldest first, its last entry the current target; ``None`` if the
        alias does not exist."""

    @abstractmethod
    def _write_alias(self, alias: str, history: list[AliasEntry]) -> None:
        """Point the alias at ``history[-1].collection`` atomically and store the history."""

    @abstractmethod
    def _upsert(self, points: Iterable[ItemPoint], batch_size: int, name: str) -> None: ...

    @abstractmethod
    def _finalize(self, name: str) -> None: ...

    @abstractmethod
    def _search(
        self, name: str, vector: Any, k: int, flt: SearchFilter | None, with_payload: bool
    ) -> list[Hit]: ...

    @abstractmethod
    def _count(self, name: str) -> int: ...

    @abstractmethod
    def _address(self) -> dict[str, Any]:
        """Where the store keeps its collections, as a :meth:`health` entry (path or URL)."""

    @abstractmethod
    def _describe(self, name: str, out: dict[str, Any]) -> None:
        """Fill in :meth:`health` for collection ``name``: ``points``, ``index`` (what the
        engine reports it built: :meth:`IndexConfig.describe`'s keys plus ``applied``, false
        where the engine records but does not use them), then the backend's details; raise when
        the collection cannot be reached."""

    @abstractmethod
    def where(self, name: str | None = None) -> str:
        """Human-readable address of a collection (default: this store's name), for messages."""

    @abstractmethod
    def close(self) -> None:
        """Release files, locks and connections; the store may be reopened by using it again."""

    def _alias_lock(self, alias: str) -> AbstractContextManager[Any]:
        """Serialise read-modify-write of an alias between processes, where the backend can."""
        return nullcontext()

    def _before_alias_change(self, alias: str) -> None:
        """Hook run before an alias is created or moved (the server adopts a plain collection
        that has the alias's name, since Qdrant names are shared by collections and aliases)."""
        return None

    def _ending_at(self, history: list[AliasEntry], target: str) -> list[AliasEntry]:
        """``history`` with ``target`` appended unless it already ends there, for
        :meth:`_read_alias`: where the alias points is authoritative over the recorded history
        (someone may have edited the pointer by hand or moved the alias with another tool)."""
        if not history or history[-1].collection != target:
            history.append(AliasEntry(target, self.run_id_of(target), None))
        return history

    # -- reading (the pinned collection) -----------------------------------------------------

    @property
    def current_collection(self) -> str | None:
        """The physical collection this store searches: where :attr:`name` led on first use
        (see :meth:`alias_target`), pinned from then on; ``None`` while it leads nowhere."""
        if self._pinned is None:
            with self._lock:
                if self._pinned is None:
                    self._pinned = self.alias_target(self.name)
        return self._pinned

    @property
    def current_run_id(self) -> str | None:
        """Model run of :attr:`current_collection`: the API loads the model of this run."""
        current = self.current_collection
        return None if current is None else self.run_id_of(current)

    def _current(self) -> str:
        """The pinned collection; raises when there is neither alias nor collection."""
        name = self._pinned or self.current_collection
        if name is None:
            raise CollectionNotFoundError(f"No vector {self.where()}: {INDEX_HINT}.")
        return name

    def search(
        self, vector: Any, k: int, flt: SearchFilter | None = None, with_payload: bool = True
    ) -> list[Hit]:
        """Return up to ``k`` hits that pass ``flt``, best (highest cosine similarity) first.

        ``with_payload=False``: hits with empty payloads, for callers that need only ids and
        scores (the API's candidates: converting 100 payloads took ~0.3 ms of a 1 ms search).
        """
        k = check_k(k)
        return self._search(self._current(), vector, k, flt, with_payload)

    def count(self, collection: str | None = None) -> int:
        """Exact number of points in ``collection`` (default: the current one)."""
        return self._count(collection or self._current())

    def health(self, collection: str | None = None) -> dict[str, Any]:
        """Describe ``collection`` (default: the current one) for health checks; never raises.

        Always has ``ok`` (the collection can be opened and queried), ``backend``, ``points``
        (``None`` when unknown) and ``collection``; an ``error`` string explains ``ok=False``.
        An empty collection is reachable, hence ``ok``: callers that need items check
        ``points``.
        """
        out: dict[str, Any] = {
            "ok": False,
            "backend": self.backend,
            **self._address(),
            "alias": self.name,
            "collection": collection or self._pinned,
            "read_only": self.read_only,
        }
        try:
            name = out["collection"] = collection or self._current()
            self._describe(name, out)
            out.update(ok=True, run_id=self.run_id_of(name), hnsw_ef=self.hnsw_ef)
        except Exception as exc:  # a health check reports, it does not raise
            out.setdefault("points", None)
            out["error"] = str(exc)
        return out

    # -- building collections ----------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        dim: int,
        keyword_fields: Sequence[str] = (),
        float_fields: Sequence[str] = (),
        bool_fields: Sequence[str] = (),
        integer_fields: Sequence[str] = (),
        *,
        run_id: str | None = None,
        replace: bool = False,
    ) -> None:
        """Create an empty collection (cosine distance) with payload indexes for the fields.

        The fields named here and the store's configured ones (:attr:`index`) are indexed;
        one field with two kinds is refused. Payload indexes are created before any point
        arrives, so that filters stay fast and the HNSW graph can be built with filter-aware
        links. ``run_id`` and the index settings are stored with the collection (see
        :meth:`run_id_of`). An existing collection is only replaced with ``replace=True`` and
        never while an alias points at it: readers may be serving it.
        """
        self._check_writable("create a collection")
        check_name(name)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        kinds: dict[str, str] = {}
        named = [
            *((f, "keyword") for f in keyword_fields),
            *((f, "float") for f in float_fields),
            *((f, "bool") for f in bool_fields),
            *((f, "integer") for f in integer_fields),
            *self.index.payload_indexes.items(),
        ]
        for field_name, kind in named:
            if kinds.setdefault(field_name, kind) != kind:
                raise VectorStoreConfigError(
                    f"Payload field {field_name!r} of collection {name!r} is asked to be indexed "
                    f"as {kinds[field_name]!r} and as {kind!r}: one field, one kind (check "
                    "vector_store.payload_indexes)."
                )
        if self.collection_exists(name):
            if not replace:
                raise VectorStoreError(
                    f"Collection {name!r} already exists: pick a free name "
                    "(new_collection_name) or pass replace=True."
                )
            self.drop_collection(name)
        metadata: dict[str, Any] = {"created_at": now_iso()}
        if run_id is not None:
            metadata["run_id"] = str(run_id)
        # what was asked, kept with the collection: the only record where an engine ignores it
        metadata["index"] = self.index.describe(kinds)
        self._create(name, dim, list(kinds.items()), metadata)

    def upsert(
        self, points: Iterable[ItemPoint], batch_size: int = 1024, *, collection: str | None = None
    ) -> None:
        """Insert or replace points in ``collection`` (default: the current one), in batches."""
        self._check_writable("write points")
        self._upsert(points, batch_size, collection or self._current())

    def finalize(self, *, collection: str | None = None) -> None:
        """Build the HNSW index and persist everything, so that a later open sees it all.

        Indexing after the bulk load is much cheaper than maintaining the graph point by point.
        """
        self._check_writable("index a collection")
        self._finalize(collection or self._current())

    def drop_collection(self, name: str) -> bool:
        """Delete a collection; ``False`` if there was none. Refuses one that an alias uses."""
        self._check_writable("drop a collection")
        check_name(name)
        users = sorted(a for a, target in self.list_aliases().items() if target == name)
        if users:
            raise AliasError(
                f"Collection {name!r} is what alias {', '.join(map(repr, users))} points at: "
                "move the alias first (`recsys rollback --to COLLECTION`)."
            )
        if not self.collection_exists(name):
            return False
        self._drop(name)
        return True

    def new_collection_name(self, alias: str, run_id: str) -> str:
        """A free name for a new collection of ``run_id`` behind ``alias``.

        ``items__<run>``, or ``items__<run>-2`` and so on when that run was indexed before:
        published collections are never rewritten, since readers may have them open.
        """
        check_name(alias, "alias")
        base = collection_name(alias, run_id)
        existing = set(self.list_collections())
        name, n = base, 1
        while name in existing:
            n += 1
            name = check_name(f"{base}-{n}")
        return name

    def run_id_of(self, collection: str) -> str | None:
        """The model run whose item vectors ``collection`` holds (``None`` if unknown).

        Read from what :meth:`create_collection` stored, else from the name (``items__<run>``);
        a plain pre-alias collection has none: serve it with the model in ``artifacts/current``.
        """
        metadata = self._metadata(collection)
        if "created_at" in metadata:  # made by create_collection: trust it, even without a run
            run_id = metadata.get("run_id")
            return None if run_id is None else str(run_id)
        _, sep, rest = collection.partition(RUN_SEPARATOR)
        return rest if sep and rest else None

    # -- aliases -------------------------------------------------------------------------------

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` points at.

        A missing alias falls back to a plain collection of that name (a data root indexed
        before aliases existed keeps working); ``None`` if there is neither.
        """
        entries = self.alias_entries(alias)
        return entries[-1].collection if entries else None

    def alias_entries(self, alias: str) -> list[AliasEntry]:
        """The alias's moves, oldest first, the last one being the current target."""
        history = self._read_alias(alias)
        if history:
            return history
        if self.collection_exists(alias):
            return [AliasEntry(alias, self.run_id_of(alias), None)]
        return []

    def alias_history(self, alias: str) -> list[str]:
        """Collections the alias pointed at, oldest first, ending with the current target."""
        return [entry.collection for entry in self.alias_entries(alias)]

    def set_alias(self, alias: str, collection: str, *, run_id: str | None = None) -> str | None:
        """Point ``alias`` at ``collection`` in one atomic step; return the previous target.

        Open stores keep the collection they pinned; new ones open the new target. The move is
        recorded with the collection's model run (``run_id``, else :meth:`run_id_of`), so that
        :meth:`rollback` can undo it and the API can load the matching model.
        """
        self._check_writable("move an alias")
        check_name(alias, "alias")
        check_name(collection)
        with self._alias_lock(alias):
            self._before_alias_change(alias)
            if not self.collection_exists(collection):
                raise CollectionNotFoundError(
                    f"Cannot point alias {alias!r} at {collection!r}: there is no such "
                    f"collection (existing: {self.list_collections()})."
                )
            history = self.alias_entries(alias)
            previous = history[-1].collection if history else None
            if previous == collection:
                return previous
            entry = AliasEntry(collection, run_id or self.run_id_of(collection), now_iso())
            self._write_alias(alias, [*history, entry][-MAX_HISTORY:])
            return previous

    def rollback(self, alias: str, to: str | None = None) -> tuple[str, str]:
        """Move ``alias`` back; return ``(from, to)`` collection names.

        Without ``to`` the alias goes back to the latest earlier target that still exists, and
        the moves after it are forgotten, so that repeated rollbacks walk further back rather
        than flip between two collections. With ``to``, a collection from the history is
        rolled back to the same way; any other existing collection is moved to (and recorded).
        """
        self._check_writable("roll an alias back")
        check_name(alias, "alias")
        with self._alias_lock(alias):
            history = self.alias_entries(alias)
            if not history:
                raise AliasError(
                    f"Nothing to roll back: there is no alias or collection {alias!r} "
                    f"(collections: {self.list_collections()}); {INDEX_HINT}."
                )
            current = history[-1].collection
            names = [entry.collection for entry in history]
            if to is None:
                earlier = [
                    i
                    for i in range(len(history) - 2, -1, -1)
                    if names[i] != current and self.collection_exists(names[i])
                ]
                if not earlier:
                    raise AliasError(
                        f"Nothing to roll back to: alias {alias!r} points at {current!r} and no "
                        f"earlier target of it still exists (history: {names}; collections: "
                        f"{self.list_collections()}). Index another model run, or name an "
                        "existing collection with --to."
                    )
                new_history = history[: earlier[0] + 1]
            else:
                check_name(to)
                if to == current:
                    raise AliasError(f"Alias {alias!r} already points at {to!r}.")
                if not self.collection_exists(to):
                    raise CollectionNotFoundError(
                        f"Cannot roll {alias!r} back to {to!r}: there is no such collection "
                        f"(collections: {self.list_collections()}; history: {names})."
                    )
                if to in names:
                    new_history = history[: len(names) - names[::-1].index(to)]
                else:
                    new_history = [*history, AliasEntry(to, self.run_id_of(to), now_iso())]
            self._write_alias(alias, new_history[-MAX_HISTORY:])
            return current, new_history[-1].collection

    def prune(self, alias: str, keep: int) -> list[str]:
        """Drop the alias's old collections, keeping its ``keep`` latest targets; return them.

        Candidates are collections named ``<alias>__*`` (built by ``recsys index``) and a plain
        collection named ``alias`` that the history adopted. Never dropped: the current target
        of any alias, and collections that no alias ever used that are younger than
        :data:`PRUNE_MIN_AGE_S` (another index job may still be filling them).
        """
        self._check_writable("drop collections")
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the current collection), got {keep}")
        with self._alias_lock(alias):
            history = self._read_alias(alias) or []
            if not history:
                return []
            # Every collection the alias used, latest first.
            used = list(dict.fromkeys(entry.collection for entry in reversed(history)))
            protected = set(used[:keep]) | set(self.list_aliases().values())
            dropped = []
            for name in self.list_collections():
                ours = name.startswith(alias + RUN_SEPARATOR) or (name == alias and name in used)
                if not ours or name in protected:
                    continue
                if name not in used and self._age_s(name) < PRUNE_MIN_AGE_S:
                    continue
                self._drop(name)
                dropped.append(name)
            return dropped

    # -- helpers -------------------------------------------------------------------------------

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"Cannot {what}: this store was opened read-only (for serving). Open it with "
                "read_only=False, as `recsys index` and `recsys rollback` do."
            )

    def _age_s(self, name: str) -> float:
        """Seconds since the collection was created (infinite when unknown: old)."""
        created = self._metadata(name).get("created_at")
        try:
            return (datetime.now(UTC) - datetime.fromisoformat(str(created))).total_seconds()
        except (TypeError, ValueError):
            return math.inf


# -- helpers shared by the backends ----------------------------------------------------------


def _py_scalar(value: Any) -> Any:
    """Turn numpy scalars into the Python scalars that both client libraries serialise."""
    return value.item() if isinstance(value, np.generic) else value


def _point_id(value: Any) -> int:
    """Validate a point id: Qdrant accepts unsigned 64-bit integers (or UUIDs, unused here)."""
    value = _py_scalar(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"point ids must be integers, got {value!r}")
    if value < 0:
        raise ValueError(f"point ids must be >= 0 (Qdrant ids are unsigned), got {value}")
    return value


def clean_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy a payload with numpy scalars converted, refusing values a filter could not read."""
    out: dict[str, Any] = {}
    for key, value in (payload or {}).items():
        value = _py_scalar(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"payload field {key!r} is {value}: NaN/inf cannot be stored")
        out[str(key)] = value
    return out


def as_vector(
    vector: Any, dim: int | None, what: str = "query vector", where: str = "the collection"
) -> np.ndarray:
    """Check that ``vector`` is one finite float vector of the collection's dimension.

    ``where`` names the collection (``VectorStore.where``), so that a model/index mismatch
    says which collection expected what: the usual cause is a model retrained with another
    dimension while the alias still points at the old collection.
    """
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(
            f"{what} has {arr.shape[0]} dimensions, but {where} holds {dim}-dimensional "
            "vectors (is the alias on another model run's collection?)"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or inf")
    return arr


def point_batches(
    points: Iterable[ItemPoint], batch_size: int, dim: int | None, where: str = "the collection"
) -> Iterator[list[tuple[int, list[float], dict[str, Any]]]]:
    """Validated ``(id, vector, payload)`` of each point, in lists of at most ``batch_size``
    (``where``: the collection, for :func:`as_vector`'s message)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    it = iter(points)
    while batch := list(itertools.islice(it, batch_size)):
        yield [
            (
                _point_id(p.id),
                as_vector(p.vector, dim, f"vector of point {p.id}", where).tolist(),
                clean_payload(p.payload),
            )
            for p in batch
        ]


def to_hits(points: Iterable[Any], with_payload: bool) -> list[Hit]:
    """Hits from either client's scored points (``id``, ``score`` and ``payload`` attributes)."""
    return [
        Hit(int(p.id), float(p.score), dict(p.payload or {}) if with_payload else {})
        for p in points
    ]


def check_k(k: int) -> int:
    """Validate the number of hits asked for."""
    if isinstance(k, bool) or not isinstance(_py_scalar(k), int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def full_scan_threshold_kb(dim: int) -> int:
    """:data:`EXACT_BELOW` as Qdrant's ``full_scan_threshold``, which is in KB of vectors."""
    return max(1, math.ceil(EXACT_BELOW * dim * 4 / 1024))
