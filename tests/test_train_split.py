"""How `recsys train` chooses what to train on and what to score against."""

import pandas as pd
import pytest

from pipelines.schema import table_path
from pipelines.train import split_for_training
from recsys.config import Settings


def _events(timestamps: list[str]) -> pd.DataFrame:
    n = len(timestamps)
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 3}" for i in range(n)],
            "item_id": [f"i{i}" for i in range(n)],
            "timestamp": pd.to_datetime(timestamps, utc=True),
            "event_type": ["purchase"] * n,
        }
    )


def test_temporal_split_holds_out_the_last_days(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    days = [f"2026-03-{d:02d} 12:00" for d in range(1, 21)] * 2
    events = _events(days)
    split = split_for_training(settings, events, events.drop(columns="event_type"))
    assert split.mode == "temporal" and not split.undated
    assert split.cutoff == pd.Timestamp("2026-03-14", tz="UTC")  # 7 whole days before the end
    assert (split.test["timestamp"] >= split.cutoff).all() and len(split.test) == 14
    assert (split.positives["timestamp"] < split.cutoff).all()


def test_a_holdout_file_is_the_test_set_and_undated_data_is_detected(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    settings.validated_dir.mkdir(parents=True)
    holdout = _events(["2020-01-02"] * 4)
    holdout.loc[3, "event_type"] = "view"  # only purchases are predicted
    holdout.to_parquet(table_path(settings.validated_dir, "holdout"))
    events = _events(["2020-01-01"] * 10)
    split = split_for_training(settings, events, events.drop(columns="event_type"))
    assert split.mode == "holdout" and split.undated
    assert len(split.test) == 3 and len(split.train) == 10 and len(split.positives) == 10
    assert split.cutoff == split.end == pd.Timestamp("2020-01-02", tz="UTC")
    assert "leave-one-out" in split.describe()


def test_too_little_data_says_what_to_do(tmp_path) -> None:
    events = _events(["2026-03-01 12:00"] * 3)
    with pytest.raises(ValueError, match="TEST_DAYS"):
        split_for_training(Settings(home=tmp_path), events, events.drop(columns="event_type"))
