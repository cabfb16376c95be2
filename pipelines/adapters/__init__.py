"""Dataset adapters: public and retailer layouts -> the canonical raw tables.

One module per format behind :class:`~pipelines.adapters.base.DatasetAdapter`, chosen by name
(``recsys data import <name>``), the way Feast picks an online store: adding a format is adding
a module and a line to :data:`ADAPTERS`, and nothing downstream of the raw folder changes.
"""

from __future__ import annotations

from pipelines.adapters.asos import AsosAdapter
from pipelines.adapters.base import (
    DatasetAdapter,
    DatasetImportError,
    ImportSummary,
    replace_dataset,
)
from pipelines.adapters.generic import GenericAdapter
from pipelines.adapters.hm import HMAdapter
from pipelines.adapters.movielens import MovieLensAdapter

ADAPTERS: dict[str, type[DatasetAdapter]] = {
    adapter.name: adapter for adapter in (GenericAdapter, HMAdapter, MovieLensAdapter, AsosAdapter)
}


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as ``name``; an unknown name lists the known ones."""
    try:
        return ADAPTERS[name.strip().lower()]()
    except KeyError:
        known = ", ".join(f"{n} ({a.description})" for n, a in ADAPTERS.items())
        raise DatasetImportError(
            f"unknown dataset format '{name}'; known formats: {known}"
        ) from None


__all__ = [
    "ADAPTERS",
    "DatasetAdapter",
    "DatasetImportError",
    "ImportSummary",
    "get_adapter",
    "replace_dataset",
]
