"""The vector store interface shared by every backend.

Serving and indexing talk to item vectors through :class:`VectorStore` only, so that the
in-process engine (``edge``) used on a laptop and a Qdrant server used in production are
interchangeable by configuration, the way Feast picks its online store per module. Each backend
must give the same answers for the same data: cosine similarity as the score (higher is better),
the same filter semantics and the payload of every hit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: What to tell a user whose collection is missing or unreadable.
INDEX_HINT = "run `recsys index` to build it"

#: Segments bigger than this (KB) get an HNSW graph. Qdrant's default (~10 MB) would leave a
#: catalogue of a few thousand items un-indexed, so its serving path would never be exercised.
INDEXING_THRESHOLD_KB = 1

#: Default for ``exact_below``: a search whose candidate set (the whole collection, or the points
#: that pass the filter) is smaller than this many points is scanned exactly. A scan of 1,000
#: vectors takes tens of microseconds and is never wrong, whereas filtered HNSW loses recall on
#: narrow filters; larger candidate sets go through the graph.
DEFAULT_EXACT_BELOW = 1_000


class VectorStoreError(RuntimeError):
    """A vector store could not do what was asked; the message says what to do about it."""


class CollectionNotFoundError(VectorStoreError):
    """The collection has not been built (or was deleted): it must be indexed first."""


class VectorStoreConfigError(VectorStoreError, ValueError):
    """The vector store settings are incomplete or inconsistent."""


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


class VectorStore(ABC):
    """A collection of item vectors with payload filters, searched by cosine similarity.

    The life cycle is the same for every backend: ``recreate`` then ``upsert`` batches then
    ``finalize`` in the indexing job; ``search``/``count``/``health`` in serving, possibly in
    another process; ``close`` at the end. Stores may also be used as context managers.
    """

    backend: str = "abstract"

    @abstractmethod
    def recreate(
        self,
        dim: int,
        keyword_fields: Sequence[str] = (),
        float_fields: Sequence[str] = (),
        bool_fields: Sequence[str] = (),
    ) -> None:
        """Drop the collection if it exists and create an empty one (cosine distance).

        Payload indexes are created for the listed fields before any point arrives, so that
        filters stay fast and the HNSW graph can be built with filter-aware links.
        """

    @abstractmethod
    def upsert(self, points: Iterable[ItemPoint], batch_size: int = 1024) -> None:
        """Insert or replace points, sending them in batches of ``batch_size``."""

    @abstractmethod
    def finalize(self) -> None:
        """Build the HNSW index and persist everything, so that a later open sees it all.

        Indexing after the bulk load is much cheaper than maintaining the graph point by point.
        """

    @abstractmethod
    def search(self, vector: Any, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        """Return up to ``k`` hits that pass ``flt``, best (highest cosine similarity) first."""

    @abstractmethod
    def count(self) -> int:
        """Number of points in the collection."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """Describe the store for health checks; never raises.

        Always has ``ok`` (the collection can be opened and queried), ``backend`` and ``points``
        (``None`` when unknown); an ``error`` string explains ``ok=False``. An empty collection
        is reachable, hence ``ok``: callers that need items check ``points``.
        """

    @abstractmethod
    def close(self) -> None:
        """Release files, locks and connections; the store may be reopened by using it again."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def as_vector(vector: Any, dim: int | None, what: str = "query vector") -> np.ndarray:
    """Check that ``vector`` is one finite float vector of the collection's dimension."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{what} has {arr.shape[0]} dimensions, the collection has {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or inf")
    return arr


def check_k(k: int) -> int:
    """Validate the number of hits asked for."""
    if isinstance(k, bool) or not isinstance(_py_scalar(k), int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def full_scan_threshold_kb(exact_below: int, dim: int) -> int:
    """Qdrant's ``full_scan_threshold`` is in KB of vectors; convert from a point count."""
    return max(1, math.ceil(exact_below * dim * 4 / 1024))


def batched(points: Iterable[ItemPoint], batch_size: int) -> Iterator[list[ItemPoint]]:
    """Yield lists of at most ``batch_size`` points."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[ItemPoint] = []
    for point in points:
        batch.append(point)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
