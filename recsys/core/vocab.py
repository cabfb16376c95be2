"""The item vocabulary: item ids in index order, index 0 for the unknown item.

The two-tower encoder fits it; the candidate sources, the vector store (point id = index), the
ranker's rows and the API all address items by these indices through the one object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd


class Vocabulary:
    """``ids[i - 1]`` has index ``i``; an id not in the vocabulary has index 0."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids: list[str] = list(ids)
        self._index = {item: i + 1 for i, item in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")
        self._pandas_index: pd.Index | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        """Rows of a table over this vocabulary (the ids + row 0 for unknown)."""
        return len(self.ids) + 1

    def index(self, item_id: str) -> int:
        return self._index.get(item_id, 0)

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(i, 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def id(self, index: int) -> str:
        return self.ids[index - 1]

    def encode(self, item_ids: np.ndarray | Sequence[str]) -> np.ndarray:
        """:meth:`indices` vectorised through a pandas index, for millions of ids at once
        (every event of a session log)."""
        if self._pandas_index is None:
            self._pandas_index = pd.Index(self.ids)
        positions = self._pandas_index.get_indexer(np.asarray(item_ids, dtype=object))
        return (positions + 1).astype(np.int64)
