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

# ------------------------------------------------------------------ feature names
# Feature views and their columns: the feature SQL writes them, the Feast definitions declare
# them and the models read them, so they live here, below all three.
USER_FEATURES = "user_features"
USER_ACTIVITY = "user_activity"
ITEM_FEATURES = "item_features"
ITEM_ATTRIBUTES = "item_attributes"
WINDOWS = (7, 30, 90)

# Feature names per view; Feast definitions and the model read these lists.
USER_NUMERIC = (
    "views_total", "purchases_total", "carts_total", "sessions_total", "spend_total",
    "mean_price_paid", "max_price_paid",
    "views_7d", "views_30d", "views_90d", "purchases_7d", "purchases_30d", "purchases_90d",
    "carts_30d", "days_since_last_purchase", "age",
    "fav_category_share", "fav_colour_share", "fav_department_share",
)  # fmt: skip
USER_CATEGORICAL = ("fav_category", "fav_colour", "fav_department", "age_bucket")
ITEM_NUMERIC = (
    "item_purchases_total", "item_purchases_7d", "item_purchases_30d", "item_views_7d",
    "item_buyers_total", "item_trend", "item_repurchase_rate", "item_mean_price_paid",
)  # fmt: skip
ITEM_CATEGORICAL = ("category", "colour", "department", "style", "product_type")
AGE_BUCKETS = ((0, "unknown"), (13, "13-17"), (18, "18-24"), (25, "25-34"), (35, "35-44"),
               (45, "45-54"), (55, "55-64"), (65, "65+"))  # fmt: skip


RECENT_ACTIVITY = 20  # item ids kept per list in the real-time activity view
EXTRA_PREFIX = "attr_"  # catalogue columns beyond the canonical ones, as item attributes


def table_path(directory: Path, table: str) -> Path:
    """Where ``table`` lives inside a data folder (raw, validated, ...)."""
    return directory / f"{table}.parquet"
