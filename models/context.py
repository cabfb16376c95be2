"""What the candidate sources and the served pipeline know at request time.

:class:`ItemCatalog` is the catalogue by item index (the run's vocabulary: row 0 = unknown),
:class:`UserContext` the visitor, :class:`ItemFilters` the request's business filters. Sources,
the generator, the ranker's rows and the API's answers all read these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys.core.vocab import Vocabulary

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ItemFilters:
    """Business filters of a request; pushed into the vector search and applied to the rest.

    ``hide_seen``: items of this visit are not proposed again (a shop page); off, they may come
    back (next-click prediction, where returning to an item is a common next step).
    """

    category: str | None = None
    department: str | None = None
    max_price: float | None = None
    in_stock: bool | None = None
    hide_seen: bool = True

    def is_empty(self) -> bool:
        return (self.category, self.department, self.max_price, self.in_stock) == (None,) * 4


NO_FILTERS = ItemFilters()


@dataclass
class ItemCatalog:
    """Per item index arrays (row 0 = unknown item) the pipeline reads at request time.

    ``counts``/``recent_counts``: purchases in the data the sources were fitted on (all time
    and the recent window), computed from the same interactions as the sources so that ranker
    training rows and serving rows see demand the same way.
    """

    vocab: Vocabulary
    category: np.ndarray
    colour: np.ndarray
    department: np.ndarray
    category_names: list[str]
    colour_names: list[str]
    department_names: list[str]
    price: np.ndarray
    in_stock: np.ndarray
    counts: np.ndarray
    recent_counts: np.ndarray
    titles: list[str]
    _masks: dict[ItemFilters, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_frame(cls, vocab: Vocabulary, frame: pd.DataFrame) -> ItemCatalog:
        """``frame``: item_id plus any of category, colour, department, price, in_stock,
        title, count, recent_count (missing columns get neutral values)."""
        rows = frame.drop_duplicates("item_id", keep="last").set_index("item_id")
        item_ids = vocab.ids
        rows = rows.reindex(item_ids)
        n = vocab.size

        def codes(column: str) -> tuple[np.ndarray, list[str]]:
            values = rows[column] if column in rows else pd.Series(UNKNOWN, index=rows.index)
            values = values.fillna(UNKNOWN).astype(str)
            names = [UNKNOWN, *sorted(set(values) - {UNKNOWN})]
            lookup = {name: i for i, name in enumerate(names)}
            out = np.zeros(n, dtype=np.int32)
            out[1:] = [lookup[v] for v in values]
            return out, names

        def numeric(column: str, default: float) -> np.ndarray:
            out = np.full(n, default, dtype=np.float32)
            if column in rows:
                out[1:] = pd.to_numeric(rows[column], errors="coerce").fillna(default).to_numpy()
            return out

        category, category_names = codes("category")
        colour, colour_names = codes("colour")
        department, department_names = codes("department")
        price = numeric("price", np.nan)
        in_stock = np.ones(n, dtype=bool)
        if "in_stock" in rows:
            in_stock[1:] = rows["in_stock"].fillna(True).astype(bool).to_numpy()
        titles = ["", *(rows["title"].fillna(pd.Series(rows.index, index=rows.index)).astype(str)
                        if "title" in rows else list(item_ids))]  # fmt: skip
        return cls(
            vocab, category, colour, department, category_names, colour_names,
            department_names, price, in_stock,
            numeric("count", 0.0), numeric("recent_count", 0.0), titles,
        )  # fmt: skip

    @property
    def n_items(self) -> int:
        return self.vocab.size

    @property
    def item_ids(self) -> list[str]:
        return self.vocab.ids

    def index(self, item_id: str) -> int:
        return self.vocab.index(item_id)

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.vocab.indices(item_ids)

    def item_id(self, index: int) -> str:
        return self.vocab.id(index)

    def display_name(self, index: int) -> str:
        """How a reason names an item: its quoted title, else its id."""
        title, item_id = self.titles[index], self.vocab.id(index)
        return f"'{title}'" if title and title != item_id else item_id

    def allowed(self, filters: ItemFilters) -> np.ndarray | None:
        """Boolean mask of items passing the filters (None: no filter); cached per filter."""
        if filters.is_empty():
            return None
        mask = self._masks.get(filters)
        if mask is None:
            mask = np.ones(self.n_items, dtype=bool)
            mask[0] = False
            if filters.category is not None:
                mask &= self.category == _code(self.category_names, filters.category)
            if filters.department is not None:
                mask &= self.department == _code(self.department_names, filters.department)
            if filters.max_price is not None:
                mask &= self.price <= filters.max_price  # unknown price (NaN) fails the filter
            if filters.in_stock is not None:
                mask &= self.in_stock == filters.in_stock
            if len(self._masks) > 256:
                self._masks.clear()
            self._masks[filters] = mask
        return mask


def _code(names: list[str], value: str) -> int:
    try:
        return names.index(value)
    except ValueError:
        return -1  # matches nothing


@dataclass
class UserContext:
    """What is known about the visitor when recommending.

    ``history``: purchased item ids, newest first (already-bought exclusion and the sources'
    seeds). ``session``: items browsed in this visit, newest first (seeds, excluded too).
    ``features``: the Feast user row (may be empty for a new visitor). ``vector``: the
    two-tower user vector when one was computed.
    """

    user_id: str | None
    history: Sequence[str] = ()
    session: Sequence[str] = ()
    features: Mapping[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None

    @property
    def age_bucket(self) -> str | None:
        bucket = self.features.get("age_bucket")
        return None if bucket in (None, UNKNOWN) else str(bucket)

    def seeds(self, limit: int) -> list[str]:
        """Items the behavioural sources start from: this visit first, then purchases."""
        return list(dict.fromkeys([*self.session, *self.history]))[:limit]


#: ``search(vector, k, filters, exclude_indices) -> (indices, scores)``: the two-tower source's
#: nearest-neighbour search (the vector store when serving, exact when building ranker rows).
VectorSearch = Callable[[np.ndarray, int, ItemFilters, np.ndarray], tuple[np.ndarray, np.ndarray]]
