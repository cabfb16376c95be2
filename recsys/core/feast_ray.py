"""Materialization as Ray tasks: a Feast compute engine that loads key shards of each view.

``RECSYS_FEAST__MATERIALIZE_ENGINE=ray`` renders ``batch_engine: {type:`` :data:`ENGINE_TYPE`
``}`` into the generated ``feature_store.yaml``, so ``FeatureStore.materialize`` (``recsys
materialize``, or ``feast -f <that file> materialize``) keeps doing everything it does (views,
windows, the registry's watermarks) and hands each view's window to this engine. The engine
splits the view's entity keys into shards by hash; each Ray task reads its shard's newest row
per key in the window straight from the view's Parquet source with DuckDB and writes it with
the online store's own ``online_write_batch`` (Feast's conversion, any Feast online store). A
task's memory is bounded by its shard, so there is no time chunking, and a failed write fails
the materialization (the registry then does not move on).

Why not Feast's own ``ray.engine`` (0.67): over a DuckDB offline store it reads the whole window
in the driver (``to_arrow()``, then ``ray.data.from_arrow``), so only the writes are spread; it
de-duplicates per batch, not per key, and SQLite's write is an unconditional upsert, so an older
snapshot can win; and its writers catch and log every exception (``safe_batch_processor``,
``write_to_online_store``), so a failed write still reports success and the watermark advances.

Views this engine does not shard (a source other than a local Parquet file, field mappings,
aggregations, transformations, an offline write) go through Feast's local engine, said in the
log.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
from feast import FileSource
from feast.data_format import ParquetFormat
from feast.infra.common.materialization_job import (
    MaterializationJob,
    MaterializationJobStatus,
    MaterializationTask,
)
from feast.infra.common.serde import SerializedArtifacts
from feast.infra.compute_engines.base import ComputeEngine
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.repo_config import FeastConfigBaseModel
from feast.utils import _convert_arrow_to_proto, _get_column_names

from recsys.core.feast_store import RAY_MATERIALIZE_ENGINE as ENGINE_TYPE
from recsys.core.sql import ident, parquet, sql_str

log = logging.getLogger(__name__)

#: Rows converted and written per ``online_write_batch`` call in a task.
WRITE_BATCH_ROWS = 10_000


class RayShardedEngineConfig(FeastConfigBaseModel):
    """``batch_engine`` of the generated ``feature_store.yaml`` (Feast finds the config class by
    the engine's name + ``Config``)."""

    type: Literal["recsys.core.feast_ray.RayShardedEngine"] = ENGINE_TYPE
    shard_rows: int = 1_000_000
    """Most source rows of a window one task reads; more rows make more shards than CPUs."""
    write_concurrency: int = 0
    """Tasks writing at once; 0: one for SQLite (one file, one writer), else the cluster's
    CPUs."""
    memory_limit: str = "3GB"
    """DuckDB's memory limit in each task (it spills beyond)."""


@dataclass(frozen=True)
class ShardLoad:
    """What every task of one view's window needs; plain data that pickles to any node."""

    artifacts: SerializedArtifacts  # the view and the repo config (online store), Feast's way
    source: str  # the view's Parquet file, on the data root every node mounts
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # keys, features and timestamps, as the local engine reads them
    timestamp: str
    created: str | None
    start: datetime  # naive UTC, compared as Feast's offline store does: start <= ts <= end
    end: datetime
    shards: int
    memory_limit: str


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _connect(memory_limit: str, temp_dir: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET memory_limit = {sql_str(memory_limit)}")
    con.execute(f"SET temp_directory = {sql_str(temp_dir)}")
    return con


def _window(load: ShardLoad) -> str:
    """The rows of the window, ``load.start <= ts <= load.end`` as Feast's DuckDB offline store
    filters them (``pull_*_from_table_or_query``: both bounds included, in UTC)."""
    ts = ident(load.timestamp)
    return f"CAST({ts} AS TIMESTAMP) >= ? AND CAST({ts} AS TIMESTAMP) <= ?"


def shard_sql(load: ShardLoad, shard: int) -> str:
    """Shard ``shard``'s newest row per key in the window: what Feast's local engine keeps of
    the window (newest event timestamp, then created timestamp), for the keys whose hash falls
    in this shard."""
    keys = ", ".join(ident(k) for k in load.keys)
    order = f"{ident(load.timestamp)} DESC"
    if load.created:
        order += f", {ident(load.created)} DESC"
    return (
        f"SELECT {', '.join(ident(c) for c in load.columns)} FROM {parquet(load.source)} "
        f"WHERE {_window(load)} AND hash({keys}) % {load.shards} = {shard} "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1"
    )


def load_shard(load: ShardLoad, shard: int) -> tuple[int, str]:
    """In a Ray task: write shard ``shard``'s newest rows into the online store; (rows, node).
    Exceptions propagate: a failed shard fails the materialization."""
    import ray

    view, online_store, _, config = load.artifacts.unserialize()
    join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    written = 0
    with tempfile.TemporaryDirectory(prefix="recsys-materialize-") as tmp:
        con = _connect(load.memory_limit, tmp)
        try:
            con.execute("SET threads = 1")
            result = con.execute(shard_sql(load, shard), [load.start, load.end])
            for batch in result.to_arrow_reader(WRITE_BATCH_ROWS):
                if batch.num_rows == 0:
                    continue
                rows = _convert_arrow_to_proto(batch, view, join_keys)
                online_store.online_write_batch(config, view, rows, lambda _: None)
                written += batch.num_rows
        finally:
            con.close()
    return written, ray.get_runtime_context().get_node_id()


def _ray() -> Any:
    """Ray, joined or started as every recsys command does (``ensure_ray``) unless the calling
    command already did: the plain ``feast`` CLI reads the settings from the environment."""
    import ray

    if not ray.is_initialized():
        from recsys.core.ray_runtime import ensure_ray
        from recsys.core.settings import repo_settings

        ensure_ray(repo_settings())
    return ray


class RayShardedEngine(ComputeEngine):
    """Feast ``batch_engine`` whose materialization runs as Ray tasks over key shards (module
    docstring). Historical retrieval does not come here: Feast's provider asks the offline
    store (DuckDB) for it directly."""

    def __init__(self, *, repo_config: Any, offline_store: Any, online_store: Any, **_: Any):
        super().__init__(
            repo_config=repo_config, offline_store=offline_store, online_store=online_store
        )
        self.config: RayShardedEngineConfig = repo_config.batch_engine

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to set up: the tasks need only Ray and the online store."""

    def teardown_infra(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to tear down."""

    def _local(self) -> LocalComputeEngine:
        return LocalComputeEngine(repo_config=self.repo_config, offline_store=self.offline_store,
                                  online_store=self.online_store)  # fmt: skip

    def _materialize_one(
        self, registry: Any, task: MaterializationTask, **kwargs: Any
    ) -> MaterializationJob:
        view = task.feature_view
        job_id = f"{view.name}-{task.start_time}-{task.end_time}"
        why = unsharded_reason(view, task)
        if why is not None:
            log.info("%s: %s, so through Feast's local engine", view.name, why)
            return self._local()._materialize_one(registry, task, **kwargs)
        try:
            self._load(registry, task)
        except Exception as exc:  # the provider raises it: the watermark stays where it was
            return LocalMaterializationJob(job_id, MaterializationJobStatus.ERROR, exc)
        return LocalMaterializationJob(job_id, MaterializationJobStatus.SUCCEEDED)

    def _load(self, registry: Any, task: MaterializationTask) -> None:
        view = task.feature_view
        entities = [registry.get_entity(name, task.project) for name in view.entities]
        keys, features, timestamp, created = _get_column_names(view, entities)
        source = Path(view.batch_source.path)
        if not source.is_absolute():
            source = Path(self.repo_config.repo_path or ".") / source
        columns = [*keys, *features, timestamp, *([created] if created else [])]
        load = ShardLoad(
            SerializedArtifacts.serialize(view, self.repo_config), str(source), tuple(keys),
            tuple(dict.fromkeys(columns)), timestamp, created or None,
            _naive_utc(task.start_time), _naive_utc(task.end_time), 1, self.config.memory_limit,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="recsys-materialize-") as tmp:
            con = _connect(self.config.memory_limit, tmp)
            try:
                query = f"SELECT count(*) FROM {parquet(load.source)} WHERE {_window(load)}"
                rows = con.execute(query, [load.start, load.end]).fetchone()[0]
            finally:
                con.close()
        if rows == 0:
            log.info("%s: no rows in the window", view.name)
            return
        ray = _ray()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shards = max(cpus, math.ceil(rows / self.config.shard_rows))
        load = replace(load, shards=shards)
        sqlite = getattr(self.repo_config.online_store, "type", "") == "sqlite"
        concurrency = self.config.write_concurrency or (1 if sqlite else cpus)
        task_fn = ray.remote(load_shard).options(num_cpus=1, scheduling_strategy="SPREAD")
        todo, running, written, nodes = list(range(shards)), [], 0, set()
        while todo or running:
            while todo and len(running) < concurrency:
                running.append(task_fn.remote(load, todo.pop(0)))
            done, running = ray.wait(running, num_returns=1)
            for rows_written, node in ray.get(done):
                written += rows_written
                nodes.add(node)
        log.info("%s: %d rows in the window, the newest of %d keys written by %d Ray tasks on "
                 "%d node(s), %d at a time (pid %d)", view.name, rows, written, shards,
                 len(nodes), concurrency, os.getpid())  # fmt: skip


def unsharded_reason(view: Any, task: MaterializationTask) -> str | None:
    """Why ``view`` cannot go through the sharded load (None: it can)."""
    source = getattr(view, "batch_source", None)
    if not isinstance(source, FileSource):
        return f"its source is a {type(source).__name__}, not a file"
    if source.file_format is not None and not isinstance(source.file_format, ParquetFormat):
        return "its file is not Parquet"
    if "://" in source.path:
        return "its file is not on a local or mounted path"
    if source.field_mapping:
        return "its source maps field names"
    if getattr(view, "aggregations", None) or getattr(view, "feature_transformation", None):
        return "it aggregates or transforms"
    if getattr(view, "offline", False):
        return "it also writes offline"
    if not task.only_latest:
        return "every row is wanted, not the newest"
    return None
