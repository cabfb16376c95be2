"""Feature snapshots on a hand-made history, where every value can be checked by hand."""

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipelines.features import ORDER, InProcessShards, compute_features
from pipelines.synth import generate
from recsys.core.schema import table_path


def _ts(day: int, hour: int = 12) -> pd.Timestamp:
    return pd.Timestamp("2026-03-01", tz="UTC") + pd.Timedelta(days=day - 1, hours=hour)


def _at(day: int) -> pd.Timestamp:
    """The stamp of the snapshot that summarises ``day`` (the next midnight)."""
    return _ts(day + 1, 0)


ROWS = [  # user, item, day, hour, event, price, session
    ("u1", "A", 1, 10, "view", 10.0, "s1"),
    ("u1", "A", 1, 11, "purchase", 10.0, "s1"),
    ("u1", "B", 2, 9, "view", 30.0, "s2"),
    ("u1", "C", 5, 9, "purchase", 30.0, "s3"),
    ("u1", "B", 5, 10, "purchase", 50.0, "s3"),
    ("u2", "A", 3, 8, "purchase", 10.0, "s4"),
    ("u2", "A", 4, 8, "purchase", 12.0, "s5"),  # a repeat buyer of A
    ("u3", "C", 12, 8, "view", 30.0, "s6"),  # makes day 12 the data's last day
]


def write_validated(folder: Path, rows: list[tuple], items: dict, users: dict) -> Path:
    """The validated tables: interactions from ``rows`` (as in :data:`ROWS`), items, users."""
    columns = ["user_id", "item_id", "day", "hour", "event_type", "price", "session_id"]
    events = pd.DataFrame(rows, columns=columns).drop(columns=["day", "hour"])
    events = events.assign(value=1.0, timestamp=[_ts(r[2], r[3]) for r in rows])
    events.to_parquet(table_path(folder, "interactions"))
    pd.DataFrame(items).to_parquet(table_path(folder, "items"))
    pd.DataFrame(users).to_parquet(table_path(folder, "users"))
    return folder


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    items = {
        "item_id": ["A", "B", "C"],
        "category": ["tops", "bottoms", "tops"],
        "colour": ["red", None, "black"],
        "price": [10.0, 50.0, 30.0],
        "fabric": ["cotton", None, "leather"],  # a retailer's own column
    }
    users = {"user_id": ["u1", "u2"], "age": [30, 17]}
    validated = write_validated(tmp_path_factory.mktemp("validated"), ROWS, items, users)
    out = tmp_path_factory.mktemp("features")
    assert compute_features(validated, out).activity_rows == 3
    return {
        name: pd.read_parquet(out / f"{name}.parquet")
        for name in ("user_features", "item_features", "item_attributes", "user_activity")
    }


def test_user_snapshots_on_active_days_and_window_exits(features) -> None:
    u1 = features["user_features"].query("user_id == 'u1'").set_index("event_timestamp")
    # active on days 1, 2, 5; day 1 leaves the 7-day window on day 8, day 2 on day 9
    # (day 5 + 7 = 12 is also within the data); 30/90-day exits fall after day 12
    assert list(u1.index) == [_at(d) for d in (1, 2, 5, 8, 9, 12)]
    day5 = u1.loc[_at(5)]
    assert day5["purchases_total"] == 3 and day5["views_total"] == 2
    assert day5["sessions_total"] == 3
    assert day5["mean_price_paid"] == pytest.approx(30.0)
    assert day5["max_price_paid"] == 50.0
    assert day5["days_since_last_purchase"] == 0
    assert list(day5["purchased_items"]) == ["B", "C", "A"]  # newest first
    assert day5["purchases_7d"] == 3 and day5["views_7d"] == 2
    # day 8: day 1 has left the 7-day window; nothing new happened
    assert u1.loc[_at(8), "purchases_7d"] == 2 and u1.loc[_at(8), "views_7d"] == 1
    assert u1.loc[_at(8), "purchases_30d"] == 3
    assert u1.loc[_at(12), "purchases_7d"] == 0 and u1.loc[_at(12), "purchases_total"] == 3
    assert u1.loc[_at(12), "days_since_last_purchase"] == 7
    day2 = u1.loc[_at(2)]  # a view-only day carries the history forward
    assert list(day2["purchased_items"]) == ["A"] and day2["days_since_last_purchase"] == 1


def test_user_tastes_and_age_bucket(features) -> None:
    users = features["user_features"].sort_values("event_timestamp").groupby("user_id").last()
    assert users.loc["u1", "fav_category"] == "tops"  # A and C are tops, B is bottoms
    assert users.loc["u1", "fav_category_share"] == pytest.approx(2 / 3)
    assert users.loc["u1", "age_bucket"] == "25-34"
    assert users.loc["u2", "age_bucket"] == "13-17"
    assert users.loc["u3", "age_bucket"] == "unknown"  # not in the users table
    assert users.loc["u3", "purchases_total"] == 0
    assert list(users.loc["u3", "purchased_items"]) == []


def test_item_snapshots_are_dense_and_windows_expire(features) -> None:
    a = features["item_features"].query("item_id == 'A'").set_index("event_timestamp")
    assert list(a.index) == [_at(d) for d in range(1, 13)]  # first seen day 1 .. last day 12
    assert a.loc[_at(4), "item_purchases_total"] == 3
    assert a.loc[_at(4), "item_buyers_total"] == 2
    assert a.loc[_at(4), "item_repurchase_rate"] == pytest.approx(0.5)  # u2 bought A twice
    assert a.loc[_at(4), "item_mean_price_paid"] == pytest.approx(32 / 3)
    assert a.loc[_at(11), "item_purchases_7d"] == 0  # day 4 has left the window
    assert a.loc[_at(11), "item_purchases_30d"] == 3
    # momentum: 3 sales this week against a 30-day rate of 3 * 7/30 a week
    assert a.loc[_at(4), "item_trend"] == pytest.approx(4 / (3 * 7 / 30 + 1))
    assert a.loc[_at(11), "item_trend"] < 1


def test_item_attributes_fill_unknowns(features) -> None:
    attrs = features["item_attributes"].set_index("item_id")
    assert attrs.loc["B", "colour"] == "unknown"
    assert attrs.loc["A", "department"] == "unknown"  # column absent from the catalogue
    assert bool(attrs.loc["C", "in_stock"]) is True
    assert attrs.loc["A", "event_timestamp"] == _ts(1, 10)  # first sighting
    assert attrs.loc["C", "attr_fabric"] == "leather"  # extra columns pass through, prefixed
    assert pd.isna(attrs.loc["B", "attr_fabric"])


def test_activity_seed_is_each_users_latest_state(features) -> None:
    act = features["user_activity"].set_index("user_id")
    assert list(act.loc["u1", "recent_purchases"]) == ["B", "C", "A"]
    assert list(act.loc["u1", "recent_views"]) == ["B", "A"]
    assert act.loc["u1", "session_events"] == 2  # the last session, s3
    assert act.loc["u1", "event_timestamp"] == _ts(5, 10)


def _sorted(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values([key, "event_timestamp"]).reset_index(drop=True)


@pytest.mark.parametrize("sharded", [False, True], ids=["one-query", "entity-shards"])
def test_incremental_run_equals_a_full_recompute(tmp_path, sharded) -> None:
    """Append days to a generated shop: computing only the new days gives the full result, in
    one DuckDB query per table or over entity shards as the Ray engine runs them (the shards'
    runs are compared with the one-query full run)."""
    runner = InProcessShards(3, tmp_path / "scratch") if sharded else None
    full_dir, inc_dir, out_full, out_inc = (tmp_path / n for n in ("v1", "v2", "f1", "f2"))
    generate(full_dir, users=300, items=120, days=40, seed=5, end_date=date(2026, 5, 1),
             progress=False)  # fmt: skip
    inter = pd.read_parquet(table_path(full_dir, "interactions"))
    inc_dir.mkdir()
    for name in ("items", "users"):
        pd.read_parquet(table_path(full_dir, name)).to_parquet(table_path(inc_dir, name))
    cut = pd.Timestamp("2026-04-12", tz="UTC")
    before = inter[inter["timestamp"] < cut]
    before.to_parquet(table_path(inc_dir, "interactions"), index=False)
    assert compute_features(inc_dir, out_inc, runner=runner).mode == "full"
    inter.to_parquet(table_path(inc_dir, "interactions"))  # 19 more days arrive
    step = compute_features(inc_dir, out_inc, runner=runner)
    assert step.mode == "incremental" and str(step.since) == "2026-04-11"
    reference = compute_features(full_dir, out_full, incremental=False)
    assert (step.user_rows, step.item_rows) == (reference.user_rows, reference.item_rows)
    for name, key in (("user_features", "user_id"), ("item_features", "item_id")):
        got = _sorted(pd.read_parquet(out_inc / f"{name}.parquet"), key)
        want = _sorted(pd.read_parquet(out_full / f"{name}.parquet"), key)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
    # nothing new: nothing redone
    assert compute_features(inc_dir, out_inc, runner=runner).mode == "current"
    inter.iloc[1:].to_parquet(table_path(inc_dir, "interactions"), index=False)  # history changed
    assert compute_features(inc_dir, out_inc, runner=runner).mode == "full"
    if sharded:
        assert not any((tmp_path / "scratch").iterdir()), "the shards' files are removed"


def test_entity_shards_write_the_same_files_as_one_query(tmp_path) -> None:
    """The Ray engine's path on the hand-made history: every table of the users' and the items'
    shards, gathered, is the one-query table row for row, in the same order. Eight shards for
    three users and three items: most shards are empty, and still write their (empty) part."""
    items = {"item_id": ["A", "B", "C"], "category": ["tops", "bottoms", "tops"],
             "price": [10.0, 50.0, 30.0], "fabric": ["cotton", None, "leather"]}  # fmt: skip
    users = {"user_id": ["u1", "u2"], "age": [30, 17]}
    (tmp_path / "validated").mkdir()
    validated = write_validated(tmp_path / "validated", ROWS, items, users)
    one = compute_features(validated, tmp_path / "one")
    sharded = compute_features(validated, tmp_path / "sharded",
                               runner=InProcessShards(8, tmp_path / "scratch"))  # fmt: skip
    assert (sharded.engine, sharded.shards, sharded.nodes) == ("in-process shards", 8, 1)
    assert sharded.user_rows == one.user_rows and sharded.item_rows == one.item_rows
    for name in ORDER:
        got = pd.read_parquet(tmp_path / "sharded" / f"{name}.parquet")
        want = pd.read_parquet(tmp_path / "one" / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, obj=name)


def test_a_crafted_catalogue_column_name_stays_a_name(tmp_path) -> None:
    """A column name is data: quoted as an identifier, never spliced into the SQL (it once read
    a local file into ``item_attributes``). Paths with a quote in them work too."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    # closes the quoted name, selects the file's content, and comments out the rest of the line
    crafted = (
        f'x" AS VARCHAR) AS "attr_x", (SELECT content FROM read_text(\'{secret}\')) AS "leak" --'
    )
    validated = tmp_path / "it's validated"  # a quote in a path must not break the SQL either
    validated.mkdir()
    rows = [("u1", "A", 1, 12, "purchase", 10.0, "s1"), ("u2", "B", 2, 12, "purchase", 10.0, "s2")]
    items = {"item_id": ["A", "B"], "x": ["1", "2"], crafted: ["p", "q"]}
    write_validated(validated, rows, items, {"user_id": ["u1", "u2"], "age": [30, 40]})
    out = tmp_path / "features"
    compute_features(validated, out)
    attributes = pd.read_parquet(out / "item_attributes.parquet")
    assert "TOP-SECRET" not in attributes.to_string() and "leak" not in attributes
    assert attributes[f"attr_{crafted}"].tolist() == ["p", "q"]  # the column, under its own name
