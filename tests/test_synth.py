from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import synth
from recsys.core.schema import TABLES, table_path
from recsys.core.settings import Settings
from tests.conftest import run_cli

SHOP = {"users": 1500, "items": 400, "days": 60, "end_date": date(2026, 6, 1), "progress": False}
# Groups of ~30 items, so that a related strip (8 slots) is a small part of its group.
BROWSING = {"users": 3000, "items": 2000, "days": 30, "end_date": date(2026, 6, 1),
            "progress": False}  # fmt: skip


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, seed=3, **SHOP)
    return out


@pytest.fixture(scope="module")
def browsing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth._Catalog]:
    """A shop with a larger catalogue, and its catalogue as the generator built it."""
    out = tmp_path_factory.mktemp("browsing")
    s = synth.generate(out, seed=5, **BROWSING)
    catalog = synth._make_catalog(
        np.random.default_rng([5, 0]), BROWSING["items"], BROWSING["days"], s.start
    )
    return out, catalog


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(table_path(out, name))


def _view_paths(out: Path, index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Views as (session number, item position in ``index``), ordered by session and time,
    with immediate repeats of an item dropped (a reload is not a step)."""
    inter = _read(out, "interactions")
    views = inter[inter["event_type"] == "view"].sort_values(["session_id", "timestamp"])
    sess = pd.factorize(views["session_id"])[0]
    item = index.get_indexer(views["item_id"])
    step = np.ones(len(item), dtype=bool)
    step[1:] = (sess[1:] != sess[:-1]) | (item[1:] != item[:-1])
    return sess[step], item[step]


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


def test_views_walk_the_related_strips(browsing: tuple[Path, synth._Catalog]) -> None:
    """A next view is far more often in the last product's related strip than a same-group
    view would be, and earlier slots of the strip are clicked more."""
    out, catalog = browsing
    pd.testing.assert_frame_equal(catalog.frame, _read(out, "items"), check_dtype=False)
    sess, item = _view_paths(out, pd.Index(catalog.frame["item_id"]))
    pair = sess[1:] == sess[:-1]
    last, nxt = item[:-1][pair], item[1:][pair]
    hits = catalog.related[last] == nxt[:, None]
    # baseline: the next view replaced by a random view of its own group
    group = catalog.group_key[nxt] // catalog.stride
    rng = np.random.default_rng(0)
    shuffled = np.empty_like(nxt)
    shuffled[np.argsort(group, kind="stable")] = nxt[np.lexsort((rng.random(len(nxt)), group))]
    baseline = (catalog.related[last] == shuffled[:, None]).any(axis=1).mean()
    share = hits.any(axis=1).mean()
    assert share > 0.5 and share > 1.6 * baseline, (share, baseline)
    per_slot = hits.sum(axis=0)
    assert per_slot[:2].sum() > 2 * per_slot[-2:].sum(), per_slot
    # outfit: a strip of a top links to bottoms of the same style, and shoppers follow it
    cat = catalog.category_idx
    tops, bottoms = synth.CATEGORY_NAMES.index("tops"), synth.CATEGORY_NAMES.index("bottoms")
    strip = catalog.related[cat == tops]
    assert (cat[strip[:, list(synth.COMPLEMENT_SLOTS)]] == bottoms).mean() > 0.9
    from_tops = hits[cat[last] == tops][:, list(synth.COMPLEMENT_SLOTS)]
    assert from_tops.any(axis=1).mean() > 0.08


def test_next_item_is_learnable_from_the_last_item(browsing: tuple[Path, synth._Catalog]) -> None:
    """Successor counts fitted on 70% of the shoppers predict the others' next item better
    from the last item than from a random earlier one of the session: the order carries
    signal, not only the session's group (before sequential browsing, both were equal)."""
    out, catalog = browsing
    sess, item = _view_paths(out, pd.Index(catalog.frame["item_id"]))
    start = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]])[sess]  # first position
    pos = np.arange(len(item))
    first_visit = ~pd.DataFrame({"s": sess, "i": item}).duplicated().to_numpy()
    train = sess < np.quantile(sess, 0.7)  # session ids start with the user: split by shopper
    fit = (pos > start) & train
    counts = pd.DataFrame({"a": item[pos[fit] - 1], "b": item[fit]}).value_counts()
    top = counts.groupby(level="a").head(10).index  # (a, b) pairs of each a's top 10
    test = np.flatnonzero((pos - start >= 2) & ~train & first_visit)
    rng = np.random.default_rng(0)
    earlier = start[test] + rng.integers(0, 1 << 30, len(test)) % (test - 1 - start[test])
    hr_last = pd.MultiIndex.from_arrays([item[test - 1], item[test]]).isin(top).mean()
    hr_earlier = pd.MultiIndex.from_arrays([item[earlier], item[test]]).isin(top).mean()
    assert len(test) > 2_000
    assert hr_last > 1.25 * hr_earlier, (hr_last, hr_earlier)


def test_click_only_shop_has_the_same_views_users_and_items(shop: Path, tmp_path: Path) -> None:
    s = synth.generate(tmp_path, seed=3, event_types=("view",), **SHOP)
    clicks = _read(tmp_path, "interactions")
    assert set(clicks["event_type"]) == {"view"} and s.purchases == 0
    assert s.interactions == len(clicks)
    full = _read(shop, "interactions")
    pd.testing.assert_frame_equal(clicks, full[full["event_type"] == "view"].reset_index(drop=True))
    for name in ("users", "items"):
        pd.testing.assert_frame_equal(_read(tmp_path, name), _read(shop, name))
    carts = synth.generate(tmp_path / "carts", seed=3, event_types=("view", "add_to_cart"), **SHOP)
    assert set(_read(tmp_path / "carts", "interactions")["event_type"]) == {"view", "add_to_cart"}
    assert carts.purchases == 0


@pytest.mark.parametrize("event_types", [("view", "click"), ()])
def test_unknown_event_types_are_refused(tmp_path: Path, event_types: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="allowed are view, add_to_cart, purchase"):
        synth.generate(tmp_path, seed=3, event_types=event_types, **SHOP)


@pytest.mark.e2e
def test_cli_synth_events_option(tmp_path: Path) -> None:
    args = ("data", "synth", "--users", "80", "--items", "40", "--days", "10",
            "--end-date", "2026-01-01")  # fmt: skip
    out = run_cli(tmp_path, *args, "--events", "view").stdout
    assert "(0 purchases)" in out, out
    inter = _read(Settings(home=tmp_path).raw_dir, "interactions")
    assert len(inter) > 0 and set(inter["event_type"]) == {"view"}
    bad = run_cli(tmp_path, *args, "--events", "view,click", check=False)
    assert bad.returncode == 1 and "unknown 'click'" in bad.stdout, bad.stdout
    run_cli(tmp_path, *args)  # default: every event type
    inter = _read(Settings(home=tmp_path).raw_dir, "interactions")
    assert set(inter["event_type"]) == {"view", "add_to_cart", "purchase"}
