"""How `recsys train` chooses what to train on and what to score against."""

import numpy as np
import pandas as pd
import pytest
import torch

from models.encoding import ItemEncoder
from models.two_tower import TwoTower, TwoTowerConfig
from pipelines import train
from recsys.core.catalog import load_item_attributes
from recsys.core.feast_store import open_store
from recsys.core.schema import table_path
from recsys.core.settings import Settings


def _events(timestamps: list[str]) -> pd.DataFrame:
    n = len(timestamps)
    return pd.DataFrame({"user_id": [f"u{i % 3}" for i in range(n)],
                         "item_id": [f"i{i}" for i in range(n)],
                         "timestamp": pd.to_datetime(timestamps, utc=True),
                         "event_type": ["purchase"] * n})  # fmt: skip


def _validated(settings: Settings, events: pd.DataFrame) -> None:
    settings.validated_dir.mkdir(parents=True, exist_ok=True)
    events.to_parquet(table_path(settings.validated_dir, "interactions"))


def test_temporal_split_holds_out_the_last_days(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    days = [f"2026-03-{d:02d} 12:00" for d in range(1, 21)] * 2
    events = _events(days)
    split = train.split_for_training(settings, events.drop(columns="event_type"))
    assert split.mode == "temporal" and not split.undated
    assert split.cutoff == pd.Timestamp("2026-03-14", tz="UTC")  # 7 whole days before the end
    assert (split.test["timestamp"] >= split.cutoff).all() and len(split.test) == 14


def test_positives_stream_to_a_sorted_file_without_labels_cold_items_or_the_test_window(
    tmp_path,
) -> None:
    settings = Settings(home=tmp_path)
    days = [f"2026-03-{d:02d} 12:00" for d in range(20, 0, -1)] * 2  # newest first
    events = _events(days)
    events.loc[events.index % 4 == 1, "event_type"] = "view"
    events.loc[events.index % 4 == 3, "event_type"] = "wishlist"  # not a train event
    _validated(settings, events)
    split = train.split_for_training(settings, events.drop(columns="event_type"))
    labels = events.iloc[[10]][["user_id", "item_id"]]
    out = tmp_path / "positives.parquet"
    kinds = train.write_positives(settings, split, out, labels, frozenset({"i12"}))
    written = pd.read_parquet(out)
    before = events[(events["timestamp"] < split.cutoff)
                    & events["event_type"].isin(["purchase", "view"])
                    & ~events["item_id"].isin(["i12", events.loc[10, "item_id"]])]  # fmt: skip
    assert kinds == written["event_type"].value_counts().to_dict()
    assert sorted(written["item_id"]) == sorted(before["item_id"]) and len(written) > 10
    order = written.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    assert written.index.equals(order.index)  # (timestamp, user, item): chunks concatenate
    assert train.positive_users(out) == sorted(set(written["user_id"]))


def test_a_holdout_file_is_the_test_set_and_undated_data_is_detected(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    settings.validated_dir.mkdir(parents=True)
    holdout = _events(["2020-01-02"] * 4)
    holdout.loc[3, "event_type"] = "view"  # only purchases are predicted
    holdout.to_parquet(table_path(settings.validated_dir, "holdout"))
    events = _events(["2020-01-01"] * 10)
    _validated(settings, events)
    split = train.split_for_training(settings, events.drop(columns="event_type"))
    assert split.mode == "holdout" and split.undated
    assert len(split.test) == 3 and len(split.train) == 10
    positives = tmp_path / "positives.parquet"
    assert train.write_positives(settings, split, positives) == {"purchase": 10}
    assert split.cutoff == split.end == pd.Timestamp("2020-01-02", tz="UTC")
    assert "leave-one-out" in split.describe()


def test_too_little_data_says_what_to_do(tmp_path) -> None:
    events = _events(["2026-03-01 12:00"] * 3)
    with pytest.raises(ValueError, match="TEST_DAYS"):
        train.split_for_training(Settings(home=tmp_path), events.drop(columns="event_type"))


def test_items_never_trained_on_get_a_zero_id_embedding() -> None:
    model = TwoTower(TwoTowerConfig(3, 5, {"category": 3}, 2, 2, 4))
    train.zero_untrained_ids(model, np.array([0, 4, 0, 1, 2]))  # row 0 = padding, item 2 unseen
    assert torch.all(model.item_id.weight[[0, 2]] == 0)
    assert torch.all(model.history_item.weight[[0, 2]] == 0)
    assert torch.all(model.item_id.weight[[1, 3, 4]].abs().sum(1) > 0)


def test_cold_item_metrics_against_random() -> None:
    items = ItemEncoder([f"i{n}" for n in range(20)], {}, [])
    item_vecs = np.eye(20, dtype=np.float32)
    user_vecs = np.zeros((2, 20), dtype=np.float32)
    user_vecs[0, 5] = 1.0  # user a points at i5 exactly
    user_vecs[1, 0] = 1.0  # user b points at i0, but bought i7
    truth = {"a": {"i5"}, "b": {"i7"}}
    m = train._cold_item_metrics(user_vecs, item_vecs, items, ["a", "b"], {}, truth,
                                 frozenset({"i5", "i6", "i7"}), k=1)  # fmt: skip
    assert m["users"] == 2 and m["pairs"] == 2 and m["items"] == 3
    assert m["recall@1_among_cold"] == 0.5 and m["random@1_among_cold"] == round(1 / 3, 4)
    assert m["recall@1_catalogue"] == 0.5 and m["random@1_catalogue"] == 0.05
    test = pd.DataFrame({"item_id": [f"i{n}" for n in range(10)]})
    picked = train._pick_cold_items(test, 0.2, seed=0)
    assert len(picked) == 2 and picked == train._pick_cold_items(test, 0.2, seed=0)
    assert train._pick_cold_items(test, 0.0, seed=0) == frozenset()


def test_chunked_training_examples_encode_to_the_arrays_of_one_chunk(
    pipeline_settings: Settings, tmp_path
) -> None:
    """`recsys train` reads Feast and encodes in chunks (bounded memory at H&M's size); the
    scaling waits for every row, so any chunk size writes the arrays of one chunk."""
    settings = pipeline_settings
    purchases = train.load_events(settings, ("purchase",)).drop(columns="event_type")
    split = train.split_for_training(settings, purchases)
    positives = tmp_path / "positives.parquet"
    kinds = train.write_positives(settings, split, positives)
    store = open_store(settings)
    attributes = load_item_attributes(settings)
    users = train.positive_users(positives)
    arrays = []
    for rows in (10**7, 997):
        path = tmp_path / f"arrays_{rows}.npz"
        examples = train.training_examples(store, split, positives, rows)
        _, _, counts, _ = train.encode_training_set(settings, examples, users, attributes, path)
        assert counts.sum() == sum(kinds.values())  # every positive is one example
        arrays.append(np.load(path))
    one, many = arrays
    assert sorted(one.files) == sorted(many.files) and len(one["item_idx"]) > 3 * 997
    for name in one.files:
        np.testing.assert_array_equal(one[name], many[name], err_msg=name)
