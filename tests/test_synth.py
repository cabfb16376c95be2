from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import synth
from recsys.core.schema import TABLES, table_path

SHOP = {"users": 1500, "items": 400, "days": 60, "end_date": date(2026, 6, 1), "progress": False}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, seed=3, **SHOP)
    return out


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(table_path(out, name))


def test_tables_follow_the_canonical_schema(shop: Path) -> None:
    for name, schema in TABLES.items():
        assert pq.read_schema(table_path(shop, name)).remove_metadata() == schema


def test_same_seed_and_end_date_give_identical_files(shop: Path, tmp_path: Path) -> None:
    synth.generate(tmp_path, seed=3, **SHOP)
    for name in TABLES:
        pd.testing.assert_frame_equal(_read(shop, name), _read(tmp_path, name))
    other = tmp_path / "other"
    synth.generate(other, seed=4, **SHOP)
    assert not _read(shop, "interactions").equals(_read(other, "interactions"))


def test_events_are_consistent(shop: Path) -> None:
    inter = _read(shop, "interactions")
    items = _read(shop, "items")
    assert set(inter["event_type"]) == {"view", "add_to_cart", "purchase"}
    assert inter["item_id"].isin(items["item_id"]).all()
    assert inter["timestamp"].min() >= pd.Timestamp("2026-04-02", tz="UTC")
    assert inter["timestamp"].max() < pd.Timestamp("2026-06-01", tz="UTC")
    assert not inter.duplicated(["user_id", "item_id", "timestamp", "event_type"]).any()
    # every purchase follows an add_to_cart of the same item in the same session
    buys = inter[inter["event_type"] == "purchase"]
    carts = inter[inter["event_type"] == "add_to_cart"]
    key = ["session_id", "item_id"]
    pairs = buys.merge(carts, on=key, suffixes=("", "_cart"))
    assert len(pairs.drop_duplicates(key)) == len(buys.drop_duplicates(key))
    assert (pairs["timestamp_cart"] < pairs["timestamp"]).all()


def test_planted_structure(shop: Path) -> None:
    inter = _read(shop, "interactions")
    items = _read(shop, "items").set_index("item_id")
    views = inter[inter["event_type"] == "view"]
    # long tail: the top 10% of items take far more than 10% of the views
    counts = views["item_id"].value_counts()
    assert counts.head(len(items) // 10).sum() / counts.sum() > 0.3
    # outfits: sessions that buy a top often buy bottoms of the same style
    buys = inter[inter["event_type"] == "purchase"].join(items.drop(columns="price"), on="item_id")
    per_session = buys.groupby("session_id")
    tops = buys[buys["category"] == "tops"]["session_id"].unique()
    with_bottoms = [s for s in tops if (per_session.get_group(s)["category"] == "bottoms").any()]
    assert len(with_bottoms) / len(tops) > 0.25
    same_style = [s for s in with_bottoms if per_session.get_group(s)["style"].nunique() == 1]
    assert len(same_style) / len(with_bottoms) > 0.9
    # taste: a shopper's purchases concentrate on few styles (6 exist)
    top_style_share = buys.groupby("user_id")["style"].agg(
        lambda s: s.value_counts(normalize=True).iloc[0]
    )
    assert top_style_share[buys.groupby("user_id").size() >= 5].mean() > 0.6
    # drift: items launched during the window are never seen before their launch day
    launched = inter.join(items["launch_date"], on="item_id")
    assert (launched["timestamp"] >= launched["launch_date"]).all()
    late = items[items["launch_date"] > pd.Timestamp("2026-04-02", tz="UTC")]
    assert len(late) > 0.15 * len(items)


def test_generation_streams_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "USER_BLOCK", 50)
    s = synth.generate(
        tmp_path, users=175, items=100, days=20, seed=1, end_date=date(2026, 1, 1), progress=False
    )
    users = _read(tmp_path, "users")
    assert len(users) == 175 and users["user_id"].is_unique
    assert pq.ParquetFile(table_path(tmp_path, "interactions")).num_row_groups == 4
    assert s.interactions == pq.ParquetFile(table_path(tmp_path, "interactions")).metadata.num_rows
