"""Feature snapshots on a hand-made history, where every value can be checked by hand."""

import pandas as pd
import pytest

from pipelines.features import compute_features
from pipelines.schema import table_path


def _ts(day: int, hour: int = 12) -> pd.Timestamp:
    return pd.Timestamp("2026-03-01", tz="UTC") + pd.Timedelta(days=day - 1, hours=hour)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    validated = tmp_path_factory.mktemp("validated")
    rows = [  # user, item, day, hour, event, price, session
        ("u1", "A", 1, 10, "view", 10.0, "s1"),
        ("u1", "A", 1, 11, "purchase", 10.0, "s1"),
        ("u1", "B", 2, 9, "view", 30.0, "s2"),
        ("u1", "C", 5, 9, "purchase", 30.0, "s3"),
        ("u1", "B", 5, 10, "purchase", 50.0, "s3"),
        ("u2", "A", 3, 8, "purchase", 10.0, "s4"),
    ]
    pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [_ts(r[2], r[3]) for r in rows],
            "event_type": [r[4] for r in rows],
            "value": 1.0,
            "price": [r[5] for r in rows],
            "session_id": [r[6] for r in rows],
        }
    ).to_parquet(table_path(validated, "interactions"))
    pd.DataFrame(
        {
            "item_id": ["A", "B", "C"],
            "category": ["tops", "bottoms", "shoes"],
            "colour": ["red", None, "black"],
            "price": [10.0, 50.0, 30.0],
        }
    ).to_parquet(table_path(validated, "items"))
    pd.DataFrame({"user_id": ["u1", "u2"], "age": [30, 41]}).to_parquet(
        table_path(validated, "users")
    )
    out = tmp_path_factory.mktemp("features")
    summary = compute_features(validated, out)
    assert summary.user_rows == 4
    return {
        name: pd.read_parquet(out / f"{name}.parquet")
        for name in ("user_features", "item_features", "item_attributes")
    }


def test_user_snapshots_are_stamped_after_the_day_they_summarise(features) -> None:
    u1 = features["user_features"].query("user_id == 'u1'").set_index("event_timestamp")
    assert list(u1.index) == [_ts(2, 0), _ts(3, 0), _ts(6, 0)]
    day5 = u1.loc[_ts(6, 0)]
    assert day5["purchases_total"] == 3
    assert day5["views_total"] == 2
    assert day5["sessions_total"] == 3
    assert day5["mean_price_paid"] == pytest.approx(30.0)
    assert day5["max_price_paid"] == 50.0
    assert day5["days_since_last_purchase"] == 0
    assert day5["age"] == 30
    assert list(day5["purchased_items"]) == ["B", "C", "A"]  # newest first
    day2 = u1.loc[_ts(3, 0)]  # a view-only day carries the history forward
    assert list(day2["purchased_items"]) == ["A"]
    assert day2["days_since_last_purchase"] == 1


def test_item_snapshots_are_dense_and_windows_expire(features) -> None:
    a = features["item_features"].query("item_id == 'A'").set_index("event_timestamp")
    # first seen on day 1, dense up to the data's last day (day 5)
    assert list(a.index) == [_ts(d, 0) for d in range(2, 7)]
    assert a.loc[_ts(4, 0), "item_purchases_total"] == 2
    assert a.loc[_ts(4, 0), "item_buyers_total"] == 2
    assert a.loc[_ts(6, 0), "item_purchases_7d"] == 2
    b = features["item_features"].query("item_id == 'B'").set_index("event_timestamp")
    assert b.loc[_ts(3, 0), "item_views_7d"] == 1
    assert b.loc[_ts(6, 0), "item_purchases_total"] == 1


def test_item_attributes_fill_unknowns(features) -> None:
    attrs = features["item_attributes"].set_index("item_id")
    assert attrs.loc["B", "colour"] == "unknown"
    assert attrs.loc["A", "department"] == "unknown"  # column absent from the catalogue
    assert bool(attrs.loc["C", "in_stock"]) is True
    assert attrs.loc["A", "event_timestamp"] == _ts(1, 10)  # first sighting
