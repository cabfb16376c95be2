"""Feast definitions: entities, sources, feature views and services of the platform.

Sources point at the Parquet files that `recsys features` writes under the data root
(``RECSYS_HOME``, default ``var/`` in the checkout). Paths are absolute because Feast resolves
relative source paths against the current directory, not against this repo.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Bool, Float64, Int64, String
from feast.value_type import ValueType

from recsys.config import Settings

FEATURES_DIR = Settings().features_dir  # fresh: RECSYS_HOME may change per run


def _source(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(FEATURES_DIR / f"{name}.parquet"),
        timestamp_field="event_timestamp",
    )


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
    ttl=timedelta(days=365),
    schema=[
        Field(name="views_total", dtype=Int64),
        Field(name="purchases_total", dtype=Int64),
        Field(name="sessions_total", dtype=Int64),
        Field(name="spend_total", dtype=Float64),
        Field(name="mean_price_paid", dtype=Float64),
        Field(name="max_price_paid", dtype=Float64),
        Field(name="purchases_30d", dtype=Int64),
        Field(name="views_7d", dtype=Int64),
        Field(name="days_since_last_purchase", dtype=Int64),
        Field(name="age", dtype=Int64),
        Field(name="purchased_items", dtype=Array(String)),
    ],
    source=_source("user_features"),
    online=True,
    description="Daily snapshots of a shopper's activity and newest-first purchase history.",
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(days=365),
    schema=[
        Field(name="item_purchases_total", dtype=Int64),
        Field(name="item_purchases_7d", dtype=Int64),
        Field(name="item_views_7d", dtype=Int64),
        Field(name="item_buyers_total", dtype=Int64),
    ],
    source=_source("item_features"),
    online=True,
    description="Daily snapshots of an item's demand.",
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
    ],
    source=_source("item_attributes"),
    online=True,
    description="Catalogue attributes, stamped at launch or first sighting.",
)

two_tower_training = FeatureService(
    name="two_tower_training",
    features=[user_features, item_attributes, item_features],
    description="What the two-tower model trains on.",
)

user_serving = FeatureService(
    name="user_serving",
    features=[user_features],
    description="What the API reads per request to build the user vector and filters.",
)
