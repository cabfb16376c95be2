"""Feast definitions: entities, sources, feature views and services of the platform.

Sources point at the Parquet files that `recsys features` writes under the data root
(``RECSYS_HOME``, default ``var/`` in the checkout). Paths are absolute because Feast resolves
relative source paths against the current directory, not against this repo. TTLs come from the
same settings (``RECSYS_FEATURES__USER_TTL_DAYS`` ...).
"""

from datetime import timedelta

import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.types import Array, Bool, Float64, Int64, String
from feast.value_type import ValueType

from recsys.core.schema import EXTRA_PREFIX
from recsys.core.settings import repo_settings

# `recsys materialize` hands its settings over; the plain `feast` CLI reads the environment
SETTINGS = repo_settings()
FEATURES_DIR = SETTINGS.features_dir
TTL = SETTINGS.features


def _source(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(FEATURES_DIR / f"{name}.parquet"),
        timestamp_field="event_timestamp",
    )


def _extra_attributes() -> list[Field]:
    """The catalogue's own extra columns (``attr_*``), as found by `recsys features`."""
    path = FEATURES_DIR / "item_attributes.parquet"
    if not path.exists():
        return []
    names = pq.read_schema(path).names
    return [Field(name=n, dtype=String) for n in names if n.startswith(EXTRA_PREFIX)]


def _counts(*names: str) -> list[Field]:
    return [Field(name=n, dtype=Int64) for n in names]


def _reals(*names: str) -> list[Field]:
    return [Field(name=n, dtype=Float64) for n in names]


user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper, by the retailer's customer id.",
)
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalogue product, by the retailer's article id.",
)

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(days=TTL.user_ttl_days),
    schema=[
        *_counts("views_total", "purchases_total", "carts_total", "sessions_total"),
        *_reals("spend_total", "mean_price_paid", "max_price_paid"),
        *_counts("views_7d", "views_30d", "views_90d", "purchases_7d", "purchases_30d"),
        *_counts("purchases_90d", "carts_30d", "days_since_last_purchase", "age"),
        Field(name="age_bucket", dtype=String),
        Field(name="fav_category", dtype=String),
        Field(name="fav_colour", dtype=String),
        Field(name="fav_department", dtype=String),
        *_reals("fav_category_share", "fav_colour_share", "fav_department_share"),
        Field(name="purchased_items", dtype=Array(String)),
    ],
    source=_source("user_features"),
    online=True,
    description="Daily snapshots of a shopper's activity, tastes and newest-first purchases.",
)

#: What models and the API read of the activity: its bookkeeping (applied_seq) left out. A
#: projection inline, not a module variable: Feast would take that for a second view.
ACTIVITY = ["recent_views", "recent_purchases", "session_events"]

user_activity_push = PushSource(name="user_activity_push", batch_source=_source("user_activity"))

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=timedelta(days=TTL.activity_ttl_days),
    schema=[
        Field(name="recent_views", dtype=Array(String)),
        Field(name="recent_purchases", dtype=Array(String)),
        Field(name="session_events", dtype=Int64),
        # the API's bookkeeping: the last logged event folded into the row (exactly once)
        Field(name="applied_seq", dtype=Int64),
    ],
    source=user_activity_push,
    online=True,
    description="Real-time activity pushed by the API on each event; seeded from the logs.",
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(days=TTL.item_ttl_days),
    schema=[
        *_counts("item_purchases_total", "item_purchases_7d", "item_purchases_30d"),
        *_counts("item_views_7d", "item_buyers_total"),
        *_reals("item_trend", "item_repurchase_rate", "item_mean_price_paid"),
    ],
    source=_source("item_features"),
    online=True,
    description="Dense daily snapshots of an item's demand and momentum.",
)

item_attributes = FeatureView(
    name="item_attributes",
    entities=[item],
    ttl=timedelta(0),  # catalogue attributes do not expire
    schema=[
        Field(name="category", dtype=String),
        Field(name="colour", dtype=String),
        Field(name="department", dtype=String),
        Field(name="style", dtype=String),
        Field(name="product_type", dtype=String),
        Field(name="price", dtype=Float64),
        Field(name="in_stock", dtype=Bool),
        *_extra_attributes(),
    ],
    source=_source("item_attributes"),
    online=True,
    description="Catalogue attributes, stamped at launch or first sighting.",
)

two_tower_training = FeatureService(
    name="two_tower_training",
    features=[user_features, item_attributes, item_features],
    description="What the two-tower model trains on (point in time, per example).",
)

ranking = FeatureService(
    name="ranking",
    features=[user_features, user_activity[ACTIVITY], item_features, item_attributes],
    description="What a ranker reads for (user, candidate item) pairs.",
)

user_serving = FeatureService(
    name="user_serving",
    features=[user_features, user_activity[ACTIVITY]],
    description="What the API reads per request: the user vector's inputs and the filters.",
)
