"""The canonical tables every stage after ingestion reads.

Whatever the source (generated, a retailer's CSV export, a public data set), data enters the
platform as these three Parquet tables. Keeping the schema in one module means the generator,
the validator and the feature SQL agree on names and types by construction.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase")

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("price", pa.float64()),
        pa.field("session_id", pa.string()),
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("category", pa.string()),
        pa.field("product_type", pa.string()),
        pa.field("colour", pa.string()),
        pa.field("department", pa.string()),
        pa.field("style", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("in_stock", pa.bool_()),
        pa.field("launch_date", pa.timestamp("us", tz="UTC")),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int32()),
        pa.field("gender", pa.string()),
        pa.field("signup_date", pa.timestamp("us", tz="UTC")),
    ]
)

TABLES: dict[str, pa.Schema] = {"interactions": INTERACTIONS, "items": ITEMS, "users": USERS}

# Columns without which a table is unusable; the others may be absent.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": ("user_id", "item_id", "timestamp", "event_type"),
    "items": ("item_id",),
    "users": ("user_id",),
}

AGE_BOUNDS = (13, 100)


def table_path(directory: Path, table: str) -> Path:
    """Where ``table`` lives inside a data folder (raw, validated, ...)."""
    return directory / f"{table}.parquet"
