"""`recsys materialize` on a copied data root and on a store that lost its rows: the copy must
leave the original's store alone, and a wiped store must be loaded again (Feast's registry
still says every view is loaded up to its last run, so an incremental run would leave it
empty)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from recsys.core.feast_store import open_store
from recsys.core.online_features import read_rows
from recsys.core.settings import Settings
from tests.conftest import copy_home, run_cli

pytestmark = pytest.mark.e2e

ROWS = re.compile(r"([\d,]+) rows from \d+ feature views into the online store")


def _rows_loaded(output: str) -> int:
    match = ROWS.search(output)
    assert match, output[-2000:]
    return int(match.group(1).replace(",", ""))


def _user_row_written(home, user: str):
    store = open_store(Settings(home=home))
    view = store.get_feature_view("user_features")
    [(written, _)] = read_rows(store._get_provider(), store.config, view, "user_id", [user],
                               [view.features[0].name])  # fmt: skip
    return written


def test_a_wiped_online_store_is_loaded_again_and_a_full_one_is_not(pipeline_home, tmp_path):
    home = copy_home(pipeline_home[0], tmp_path / "home")
    features = Settings(home=home).features_dir / "user_features.parquet"
    user = str(pd.read_parquet(features, columns=["user_id"])["user_id"].iloc[0])
    run_cli(home, "materialize")  # the copy's store is another SQLite file: loaded in full
    assert _user_row_written(home, user) is not None
    # the copied registry named the original's tables: Feast's apply used to drop them
    assert _user_row_written(pipeline_home[0], user) is not None

    again = run_cli(home, "materialize")
    assert _rows_loaded(again.stdout + again.stderr) == 0  # nothing newer: nothing reloaded
    assert "has lost what was loaded" not in again.stdout + again.stderr

    (home / "feast" / "online_store.db").unlink()  # as a Redis restarted without persistence
    wiped = run_cli(home, "materialize")
    output = wiped.stdout + wiped.stderr
    assert "has lost what was loaded" in output
    assert _rows_loaded(output) > 0
    assert _user_row_written(home, user) is not None
