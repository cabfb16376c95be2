"""Which event type a data set's recommendations learn from (its *signal*).

Every stage that fits or scores on "what shoppers want" (features' histories, the candidate
sources, the ranker's labels, evaluation) asks here, so that a click-only shop trains on views
and a shop with orders on purchases, consistently (see ``EventSettings``).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from recsys.core.schema import table_path
from recsys.core.settings import Settings
from recsys.core.sql import parquet


def event_types(path: Path) -> list[str]:
    """The distinct event types of an interactions Parquet file."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `recsys validate` first.")
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT DISTINCT event_type FROM {parquet(path)}").fetchall()
    return sorted(str(r[0]) for r in rows if r[0] is not None)


def signal_event(settings: Settings, path: Path | None = None) -> str:
    """The strongest weighted event type of the validated interactions (or of ``path``)."""
    path = path or table_path(settings.validated_dir, "interactions")
    return settings.events.signal(event_types(path), where=str(path))
