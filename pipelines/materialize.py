"""Register the Feast definitions and load the newest feature values into the online store."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from recsys.core.feast_store import apply, online_store_target, open_store
from recsys.core.ray_runtime import ensure_ray
from recsys.core.settings import Settings
from recsys.core.sql import parquet
from recsys.core.terminal import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeSummary:
    feature_views: dict[str, int]  # rows read from the offline store per view
    seconds: float
    end: datetime


def _scalar(sql: str, params: list[Any] | None = None) -> Any:
    """One value from a throwaway DuckDB connection; timestamps come back in UTC."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql, params).fetchone()[0]


def _emptied_views(store: Any) -> list[str]:
    """The views Feast's registry says were loaded that the online store no longer holds.

    The registry keeps, per view, the time it was materialized up to, whatever happened to the
    store since: a Redis restarted without persistence, or a deleted SQLite file, is empty
    while the next incremental run would load only what is newer (nothing, for a shop whose
    data did not move). A loaded view has a row for the key its offline data updated last; one
    read of that key tells (Feast's online read applies no TTL, so an old row still counts).
    """
    # here, not at the top: importing Feast's modules (which this one does) outside
    # `import_feast` turns every library's deprecation warnings back on (`open_store` ran it)
    from recsys.core.online_features import read_rows

    provider = store._get_provider()  # the public API has no per-view raw read
    emptied = []
    for view in store.list_feature_views():
        loaded_to = view.most_recent_end_time
        if loaded_to is None or len(view.join_keys) != 1 or not view.features:
            continue
        key_column = view.join_keys[0]
        last_key = _scalar(
            f"SELECT CAST({key_column} AS VARCHAR) FROM {parquet(view.batch_source.path)} "
            "WHERE event_timestamp <= ? ORDER BY event_timestamp DESC LIMIT 1",
            [loaded_to if loaded_to.tzinfo else loaded_to.replace(tzinfo=UTC)],
        )
        if last_key is None:
            continue
        try:
            [(written, _)] = read_rows(provider, store.config, view, key_column, [last_key],
                                       [view.features[0].name])  # fmt: skip
        except Exception as exc:  # e.g. a deleted SQLite file: "no such table"
            log.warning("reading %s's online row failed (%s: %s)", view.name,
                        type(exc).__name__, exc)  # fmt: skip
            written = None
        if written is None:
            emptied.append(f"{last_key!r} of {view.name}")
    return emptied


def materialize(settings: Settings, end: datetime | None = None) -> MaterializeSummary:
    """``feast apply`` then materialize every feature view up to ``end`` (default: now).

    A view never materialized before starts at its earliest event timestamp (not at now - TTL,
    as ``feast materialize-incremental`` would), so historical data sets load completely; later
    runs continue incrementally from where the last one ended. Feast's registry keeps that
    point per view, not per online store: after a switch of store (SQLite to Redis, another
    Redis) every view loads from its start again, or the new store would stay empty.

    With ``feast.materialize_engine`` "ray" each view's window goes to Ray tasks over key shards
    (``recsys.core.feast_ray``), which bound their memory by shard: no time chunks then.
    """
    started = time.perf_counter()
    chunk_rows = settings.features.materialize_chunk_rows
    on_ray = settings.feast.materialize_engine == "ray"
    if on_ray:  # joined (RAY_ADDRESS) or started here as every command does, not by Feast
        ensure_ray(settings)
    apply(settings)
    store = open_store(settings)
    end = end or datetime.now(UTC)
    target = online_store_target(settings)
    marker = settings.feast_dir / "materialized_into.txt"
    same_store = marker.exists() and marker.read_text().strip() == target
    if same_store and (emptied := _emptied_views(store)):
        log.warning(
            "the online store %s has lost what was loaded into it (e.g. a Redis restarted "
            "without persistence, a deleted SQLite file): no row for the last-updated key %s; "
            "loading every view from its start again", target, ", ".join(emptied)
        )  # fmt: skip
        same_store = False
        # `feast apply` changes nothing on an unchanged repo: make the store's tables again
        store._get_provider().update_infra(
            project=store.project, tables_to_delete=[], tables_to_keep=store.list_feature_views(),
            entities_to_delete=[], entities_to_keep=store.list_entities(), partial=True,
        )  # fmt: skip
    if not same_store:
        log.info("materializing every view from its start into %s", target)
    rows: dict[str, int] = {}
    windows: list[tuple[str, datetime]] = []  # (view, start) of the views with rows to load
    for view in store.list_feature_views():
        path = view.batch_source.path
        start = view.most_recent_end_time if same_store else None
        if start is None:
            earliest = _scalar(f"SELECT min(event_timestamp) FROM {parquet(path)}")
            if earliest is None:
                rows[view.name] = 0
                continue
            start = earliest - timedelta(seconds=1)
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
        rows[view.name] = _scalar(
            f"SELECT count(*) FROM {parquet(path)} "
            "WHERE event_timestamp > ? AND event_timestamp <= ?",
            [start, end],
        )
        windows.append((view.name, start))
    with progress_bar("materialize", sum(rows.values()), "rows") as bar:
        for name, start in windows:
            # Feast loads a whole window into memory: walk a large range in time chunks of
            # about `chunk_rows` rows to bound it (each call has a fixed cost, so small ones go
            # at once). Feast prints its own progress bars, and ibis deprecation warnings.
            chunks = 1 if on_ray else max(1, math.ceil(rows[name] / chunk_rows))
            step = (end - start) / chunks
            lo = start
            while lo < end:
                hi = min(lo + step, end)
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    store.materialize(start_date=lo, end_date=hi, feature_views=[name])
                bar.advance(rows[name] / chunks)
                lo = hi
    marker.write_text(target + "\n")
    seconds = time.perf_counter() - started
    log.info("materialized %s into %s in %.1fs", rows, target, seconds)
    return MaterializeSummary(rows, seconds, end)
