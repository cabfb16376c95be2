"""The Ray materialization engine's pieces without Ray: its shard query and its rendering.

The engine itself, on a real two-node cluster against Feast's local engine, is tested in
``tests/test_ray_cluster.py``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from recsys.core.feast_ray import RayShardedEngineConfig, ShardLoad, shard_sql
from recsys.core.feast_store import resolved_yaml
from recsys.core.settings import FeastSettings, FeatureSettings, Settings


def test_the_shards_hold_each_keys_newest_row_in_the_window_once(tmp_path: Path) -> None:
    """Union of every shard = the newest row per key with ``start <= ts <= end`` (both bounds
    in, as Feast's DuckDB offline store reads a window); no key in two shards."""
    stamps = pd.to_datetime(["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-05"], utc=True)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(28)],
            "value": range(28),
            "event_timestamp": [stamps[i % 4] for i in range(28)],
        }
    )
    path = tmp_path / "view.parquet"
    frame.to_parquet(path, coerce_timestamps="us")  # as DuckDB writes the feature files
    load = ShardLoad(
        artifacts=None,  # type: ignore[arg-type]  # only the query is built here
        source=str(path), keys=("user_id",), columns=("user_id", "value", "event_timestamp"),
        timestamp="event_timestamp", created=None, start=datetime(2026, 3, 1),
        end=datetime(2026, 3, 3), shards=3, memory_limit="1GB",
    )  # fmt: skip
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        parts = [con.execute(shard_sql(load, k), [load.start, load.end]).df() for k in range(3)]
    got = pd.concat(parts).sort_values("user_id").reset_index(drop=True)
    window = frame[frame["event_timestamp"] <= pd.Timestamp("2026-03-03", tz="UTC")]
    want = (
        window.sort_values("event_timestamp").groupby("user_id").tail(1)
        .sort_values("user_id").reset_index(drop=True)
    )  # fmt: skip
    assert sum(len(p) for p in parts) == frame["user_id"].nunique() == len(got)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_the_ray_engine_is_rendered_and_feast_reads_it(tmp_path: Path) -> None:
    """RECSYS_FEAST__MATERIALIZE_ENGINE=ray puts the engine, sized from the feature settings,
    into the generated feature_store.yaml, and Feast finds its config class by the type."""
    from feast.repo_config import load_repo_config

    settings = Settings(
        home=tmp_path,
        feast=FeastSettings(materialize_engine="ray"),
        features=FeatureSettings(materialize_chunk_rows=1234, duckdb_memory_limit="2GB"),
    )
    config = load_repo_config(settings.feature_repo, resolved_yaml(settings))
    engine = config.batch_engine
    assert isinstance(engine, RayShardedEngineConfig), engine
    assert (engine.shard_rows, engine.memory_limit, engine.write_concurrency) == (1234, "2GB", 0)
    default = resolved_yaml(Settings(home=tmp_path)).read_text()
    assert "batch_engine" not in default, "the local engine stays Feast's default"
