"""Validation stage: raw Parquet tables -> validated tables + quarantine + a Data Docs report.

Everything after ingestion (features, training, serving) assumes clean keys and sane values, so
this stage is the one gate where bad data is caught. It works at two levels:

* **Table level**: a missing file, a missing required column or a column whose type cannot be cast
  to the canonical schema makes the whole table unusable. These raise :class:`DataValidationError`
  at once, before any slow work, with a message that says what to fix.
* **Row level**: bad rows (nulls in keys, unknown event types, negative prices, future timestamps,
  dangling references, duplicates, impossible ages) are moved to a quarantine table with a
  ``reason`` column instead of failing the run, so a handful of broken rows does not stop the
  pipeline. Only when more than ``max_bad_fraction`` of a table is bad does the stage fail, since
  at that point the export itself is probably broken.

The same rules are expressed as Great Expectations suites and run on the raw (cast but unfiltered)
tables, so the HTML Data Docs show what was wrong with the input, not the already-cleaned output.
The row checks themselves are one SQL ``CASE`` per table: quarantine needs a per-row reason, which
GX does not give cheaply, and that SQL is the single source of truth for what lands downstream.

The stage streams, so a table larger than memory validates in bounded memory (an H&M-sized
export is tens of millions of rows): the raw file is cast batch by batch into a scratch Parquet
file; the rules run in a file-backed DuckDB database that spills beyond ``memory_limit``; the
outputs are written from DuckDB's Arrow batches; and the GX suite runs over parts of at most
``gx_chunk_rows`` rows, split by a hash of the table's key so that a uniqueness expectation sees
every copy of a key in one part, merged into one result per table for Data Docs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.core.schema import AGE_BOUNDS, EVENT_TYPES, REQUIRED_COLUMNS, TABLES, table_path
from recsys.core.settings import ValidationSettings
from recsys.core.sql import connect_duckdb, ident, sql_str
from recsys.core.terminal import track

# GX phones home and draws progress bars unless told otherwise; the variable must be set before
# great_expectations is imported. GX itself is imported inside the functions that use it, because
# the import alone takes seconds and most CLI commands never validate.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

if TYPE_CHECKING:
    import duckdb
    from rich.console import Console

log = logging.getLogger(__name__)

# Items and users are cleaned first so that the referential checks on interactions use the keys
# that actually reach the validated folder.
TABLE_ORDER: tuple[str, ...] = ("items", "users", "interactions", "holdout")
OPTIONAL_TABLES: frozenset[str] = frozenset({"users", "holdout"})
# The holdout (pairs that evaluation scores against, written by some importers) is interaction
# data under another name: same schema, same row rules, same expectations.
RULES_OF: dict[str, str] = {"holdout": "interactions"}
EVENT_KEY: tuple[str, ...] = ("user_id", "item_id", "timestamp", "event_type")
# The key column of each referenced table: interactions must use keys that passed validation.
KEY_OF: dict[str, str] = {"items": "item_id", "users": "user_id"}
REASON_COLUMN = "reason"

# Which column each row-level reason is about, for error messages; the other reasons name it
# after their first word (null_<column>, unknown_<column>, duplicate_<column>).
REASON_COLUMNS: dict[str, str] = {
    "invalid_event_type": "event_type",
    "negative_price": "price",
    "future_timestamp": "timestamp",
    "duplicate_event": ",".join(EVENT_KEY),
    "age_out_of_range": "age",
}

# A key's repeats among otherwise valid rows are quarantined under this reason, first copy kept.
UNIQUE_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "interactions": (EVENT_KEY, "duplicate_event"),
    "items": (("item_id",), "duplicate_item_id"),
    "users": (("user_id",), "duplicate_user_id"),
}
# The row order of the raw file (DuckDB's ``file_row_number``) and the reason of each row, as
# columns of the checked tables; they never reach an output file.
ROW, REASON = "file_row_number", "_recsys_reason"
CAST_BATCH_ROWS = 1_000_000  # raw rows cast at a time (and rows per written batch)

#: The settings' defaults, for callers that pass none (the CLI passes the user's settings).
DEFAULTS = ValidationSettings()

GX_DATASOURCE = "recsys_raw"
GX_BATCH_DEFINITION = "whole_table"
GX_SITE = "recsys_data_docs"


class DataValidationError(RuntimeError):
    """A table cannot be used as is; the message names table, column, count and the fix.

    The structured attributes let callers (the CLI, tests) react without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        column: str | None = None,
        count: int | None = None,
    ) -> None:
        super().__init__(message)
        self.table, self.column, self.count = table, column, count


@dataclass
class TableResult:
    """Row accounting and GX outcome for one table; ``rows_in == rows_valid + rows_quarantined``."""

    table: str
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    expectations_passed: int = 0
    expectations_failed: int = 0


@dataclass
class ValidationResult:
    """What the stage produced: per-table results, the Data Docs index and the quarantine folder."""

    tables: dict[str, TableResult]
    report_path: Path
    quarantine_dir: Path


@dataclass
class _Checked:
    """A table after casting and row checks, before anything is written: its rows (with their
    reasons) are the DuckDB table ``name`` of the stage's scratch database."""

    name: str
    schema: pa.Schema  # the cast table's: canonical columns first (nullable), extras after
    rows: int
    reasons: dict[str, int]  # reason -> rows, most frequent first

    def result(self) -> TableResult:
        bad = sum(self.reasons.values())
        return TableResult(self.name, self.rows, self.rows - bad, bad, dict(self.reasons))


# --------------------------------------------------------------------------------------------
# Table level: read, required columns, casting
# --------------------------------------------------------------------------------------------


def _rules(name: str) -> str:
    """The canonical table whose schema and rules apply to table ``name``."""
    return RULES_OF.get(name, name)


def _file_label(name: str) -> str:
    return f"{name}.parquet"


def _open_raw(raw_dir: Path, name: str) -> pq.ParquetFile | None:
    """Open a raw table and check what its schema and footer tell: the required columns are
    there and it has rows. None for an absent optional table, an error for an absent required
    one. Nothing is read yet: a table is then cast batch by batch (:func:`_cast_file`)."""
    path = table_path(raw_dir, name)
    if not path.is_file():
        if name in OPTIONAL_TABLES:
            log.info("%s absent from %s: skipping it and its referential check", path.name, raw_dir)
            return None
        raise DataValidationError(
            f"{_file_label(name)}: required table is missing (expected file: {path}). "
            "Run ingestion first or point raw_dir at the folder holding the export.",
            table=name,
        )
    try:
        source = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(
            f"{_file_label(name)}: cannot be read as Parquet (file: {path}): {exc}. "
            "Re-export the table.",
            table=name,
        ) from exc
    for column in REQUIRED_COLUMNS[_rules(name)]:
        if column not in source.schema_arrow.names:
            raise DataValidationError(
                f"{_file_label(name)}: required column '{column}' is missing (file: {path}). "
                "Fix the export or map the column.",
                table=name,
                column=column,
            )
    if source.metadata.num_rows == 0:
        raise DataValidationError(
            f"{path} has no rows: an empty {name} table would leave nothing to learn from or "
            "serve; check the export (a header-only file?)",
            table=name,
            count=0,
        )
    return source


def _cast_column(array: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Cast to ``target``; timestamps become UTC microseconds, naive values read as UTC.

    Nanoseconds are truncated (the platform stores microseconds). Numbers are refused as
    timestamps: epoch seconds and milliseconds look the same, and guessing wrong silently moves
    events by decades.
    """
    if array.type == target:
        return array
    if pa.types.is_dictionary(array.type):
        array = pc.cast(array, array.type.value_type)
    source = array.type
    if not pa.types.is_timestamp(target):
        return pc.cast(array, target)
    if pa.types.is_timestamp(source) or pa.types.is_date(source):
        return pc.cast(array, target, safe=False)
    if pa.types.is_string(source) or pa.types.is_large_string(source):
        try:
            return pc.cast(array, target)
        except pa.ArrowInvalid:
            # Strings without a zone offset: parse as naive, then read them as UTC.
            naive = pc.cast(array, pa.timestamp(target.unit))
            return pc.cast(naive, target)
    raise pa.ArrowInvalid(
        f"{source} values are ambiguous as timestamps (seconds? milliseconds?); "
        "export them as timestamps or ISO-8601 strings"
    )


def _conform(name: str, raw: pa.Table, source: Path) -> pa.Table:
    """Cast to the canonical schema (required columns are checked before); extras pass through.

    Optional canonical columns that the export lacks are added as nulls, so every downstream
    reader can rely on the full schema. All fields are nullable here: rows with nulls in key
    columns still have to reach the quarantine.
    """
    schema = TABLES[_rules(name)]
    arrays: list[pa.ChunkedArray] = []
    for target in schema:
        if target.name not in raw.column_names:
            log.info("%s: optional column '%s' absent, filled with nulls", name, target.name)
            arrays.append(pa.chunked_array([pa.nulls(raw.num_rows, target.type)]))
            continue
        column = raw.column(target.name)
        try:
            arrays.append(_cast_column(column, target.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise DataValidationError(
                f"{_file_label(name)}: column '{target.name}' has type {column.type} which "
                f"cannot be cast to {target.type} (file: {source}): {exc}. "
                "Fix the export or map the column.",
                table=name,
                column=target.name,
            ) from exc
    extras = [f for f in raw.schema if f.name not in schema.names]
    arrays += [raw.column(f.name) for f in extras]
    fields = [f.with_nullable(True) for f in schema] + extras
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _cast_file(name: str, source: pq.ParquetFile, path: Path, out: Path) -> pa.Schema:
    """Cast the raw table into Parquet at ``out`` one batch at a time; the cast schema.

    A value that cannot be cast raises when its batch is reached, which on a large file can be
    late, but nothing is written outside the stage's scratch folder until every check passed.
    """
    writer: pq.ParquetWriter | None = None
    batches = source.iter_batches(batch_size=CAST_BATCH_ROWS)
    total = math.ceil(source.metadata.num_rows / CAST_BATCH_ROWS)
    try:
        for batch in track(batches, f"casting {name}", total, "batches", enabled=total > 1):
            table = _conform(name, pa.Table.from_batches([batch]), path)
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    assert writer is not None  # the file has rows (checked by _open_raw)
    return writer.schema


# --------------------------------------------------------------------------------------------
# Row level: one reason per row, the first rule that applies
# --------------------------------------------------------------------------------------------


def _reason_case(name: str, now: pd.Timestamp, refs: Mapping[str, str]) -> str:
    """The row rules of table ``name`` as one SQL ``CASE``: the first rule that applies gives
    the row's reason (NULL: valid). ``refs`` maps a key column to the table of the keys that
    passed validation, which interactions must use (referential integrity).

    A NULL in a compared column is not a violation (``NULL < 0`` is not true): only required
    columns must be present, and a missing age is allowed (many shops never ask).
    """
    rules = _rules(name)
    whens = [(f"{ident(c)} IS NULL", f"null_{c}") for c in REQUIRED_COLUMNS[rules]]
    if rules == "interactions":
        types = ", ".join(sql_str(t) for t in EVENT_TYPES)
        whens += [
            (f"event_type NOT IN ({types})", "invalid_event_type"),
            ("price < 0", "negative_price"),
            (f'"timestamp" > {sql_str(now.isoformat())}::TIMESTAMPTZ', "future_timestamp"),
        ]
        whens += [
            (f"{ident(c)} NOT IN (SELECT {ident(c)} FROM {ident(keys)})", f"unknown_{c}")
            for c, keys in refs.items()
        ]
    elif rules == "items":
        whens.append(("price < 0", "negative_price"))
    elif rules == "users":
        low, high = AGE_BOUNDS
        whens.append((f"age < {low} OR age > {high}", "age_out_of_range"))
    return "CASE " + " ".join(f"WHEN {c} THEN {sql_str(r)}" for c, r in whens) + " END"


def _check_rows(
    con: duckdb.DuckDBPyConnection, name: str, cast: Path, schema: pa.Schema, case: str
) -> _Checked:
    """Table ``name`` in ``con``: the cast rows, their raw order and their reason.

    Duplicates are looked for only among rows that passed every other rule (the window's
    partition includes "has a reason"), so that when the first copy is bad (e.g. a negative
    price) a later good copy is kept rather than both lost; among valid copies the first in the
    raw file is kept.
    """
    keys, duplicate = UNIQUE_KEYS[_rules(name)]
    partition = ", ".join(ident(k) for k in keys)
    con.execute(f"""
        CREATE OR REPLACE TABLE {ident(name)} AS
        WITH ruled AS (
            SELECT *, {case} AS _recsys_first
            FROM read_parquet({sql_str(cast)}, file_row_number = true)
        )
        SELECT * EXCLUDE (_recsys_first),
            coalesce(_recsys_first, CASE WHEN row_number() OVER (
                PARTITION BY {partition}, _recsys_first IS NULL ORDER BY {ROW}
            ) > 1 THEN {sql_str(duplicate)} END) AS {REASON}
        FROM ruled
    """)
    (rows,) = con.execute(f"SELECT count(*) FROM {ident(name)}").fetchone()  # type: ignore[misc]
    counts = con.execute(f"""
        SELECT {REASON}, count(*) FROM {ident(name)} WHERE {REASON} IS NOT NULL
        GROUP BY ALL ORDER BY 2 DESC, 1
    """).fetchall()
    return _Checked(name, schema, int(rows), {str(r): int(n) for r, n in counts})


def _valid_keys(con: duckdb.DuckDBPyConnection, checked: _Checked) -> str:
    """A table of the keys of ``checked`` that passed validation; its name."""
    column = KEY_OF[checked.name]
    keys = f"valid_{column}s"
    con.execute(f"""
        CREATE OR REPLACE TABLE {ident(keys)} AS
        SELECT DISTINCT {ident(column)} FROM {ident(checked.name)} WHERE {REASON} IS NULL
    """)
    return keys


# --------------------------------------------------------------------------------------------
# Great Expectations
# --------------------------------------------------------------------------------------------


def _gx_context(reports_dir: Path, docs_dir: Path) -> Any:
    """Open (or create) the file-mode context under ``reports_dir/gx``, idempotently.

    Re-running must not fail on objects that already exist, so the context is configured with
    get-or-create and update calls only. The Data Docs site points at ``docs_dir`` (absolute, so
    the HTML lands where the caller asked, not under the GX project); GX's default ``local_site``
    is dropped so docs are rendered once.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(reports_dir / "gx"))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.save()

    site_config = {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),
        },
    }
    sites = context.list_data_docs_sites()
    if GX_SITE not in sites:
        context.add_data_docs_site(GX_SITE, site_config)
    elif sites[GX_SITE] != site_config:
        context.update_data_docs_site(GX_SITE, site_config)
    if "local_site" in context.list_data_docs_sites():
        context.delete_data_docs_site("local_site")
    return context


def _get_or_create(getter: Callable[[], Any], creator: Callable[[], Any]) -> Any:
    try:
        return getter()
    except LookupError:  # GX raises KeyError or LookupError for unknown names
        return creator()


def _batch_definition(context: Any, name: str) -> Any:
    source = _get_or_create(
        lambda: context.data_sources.get(GX_DATASOURCE),
        lambda: context.data_sources.add_pandas(GX_DATASOURCE),
    )
    asset = _get_or_create(lambda: source.get_asset(name), lambda: source.add_dataframe_asset(name))
    return _get_or_create(
        lambda: asset.get_batch_definition(GX_BATCH_DEFINITION),
        lambda: asset.add_batch_definition_whole_dataframe(GX_BATCH_DEFINITION),
    )


def _expectations(name: str, with_users: bool) -> list[Any]:
    """The suite for one table: the GX mirror of the row rules in :func:`_reason_case`.

    The clock changes per run, so it is a suite parameter (``$PARAMETER``) supplied at run
    time and the stored suite stays small and stable. The valid key sets are named, not
    listed (:func:`_key_expectation`).
    """
    import great_expectations.expectations as gxe

    name = _rules(name)
    required = REQUIRED_COLUMNS[name]
    out: list[Any] = [gxe.ExpectColumnToExist(column=c) for c in required]
    out += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in required]
    if name == "interactions":
        out += [
            gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
            gxe.ExpectColumnMaxToBeBetween(column="timestamp", max_value={"$PARAMETER": "now"}),
            _reference("item_id", "an item", "items"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(EVENT_KEY)),
        ]
        if with_users:
            out.append(_reference("user_id", "a user", "users"))
    elif name == "items":
        out += [
            gxe.ExpectColumnValuesToBeUnique(column="item_id"),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
        ]
    elif name == "users":
        low, high = AGE_BOUNDS
        out += [
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnValuesToBeBetween(column="age", min_value=low, max_value=high),
        ]
    return out


#: The keys that passed validation, per referenced table, while a table's suite runs: what
#: :func:`_key_expectation`'s metric looks values up in.
_VALID_KEYS: dict[str, pd.Index] = {}


@cache
def _key_expectation() -> type:
    """GX's expectation "column values are valid keys of another table" (referential
    integrity), defined on first use (importing GX costs seconds, and most commands never
    validate).

    GX's own ``ExpectColumnValuesToBeInSet`` would carry the keys in its configuration, which
    GX serialises on every metric lookup: seconds per part for 30k ids, most of an hour for
    H&M's 1.4M users. This one carries the referenced table's name; its metric looks the
    values up in :data:`_VALID_KEYS` (a hash lookup per row, as ``isin`` does).
    """
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import (
        ColumnMapMetricProvider,
        column_condition_partial,
    )

    class ColumnValuesAreKeysOf(ColumnMapMetricProvider):  # registered by GX on definition
        condition_metric_name = "column_values.recsys_keys_of"
        condition_value_keys = ("keys_of",)

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column: pd.Series, keys_of: str, **kwargs: Any) -> pd.Series:
            return column.isin(_VALID_KEYS[keys_of])

    class ExpectColumnValuesToBeKeysOf(ColumnMapExpectation):
        """Every value of the column is a key that passed validation in table ``keys_of``."""

        keys_of: str
        map_metric = "column_values.recsys_keys_of"
        args_keys = ("column", "keys_of")
        domain_keys: ClassVar[tuple[str, ...]] = ("column", "row_condition", "condition_parser")
        success_keys = ("keys_of", "mostly")

    return ExpectColumnValuesToBeKeysOf


def _reference(column: str, what: str, table: str) -> Any:
    """Referential integrity: ``column`` values are keys that passed validation in ``table``."""
    return _key_expectation()(
        column=column,
        keys_of=table,
        description=f"{column} must reference {what} that passed validation in "
        f"{table}.parquet (referential integrity)",
    )


def _parts(checked: _Checked, chunk_rows: int) -> list[str]:
    """``WHERE`` clauses that split ``checked`` into parts of about ``chunk_rows`` rows each.

    Parts follow a hash of the first column of the table's unique key, so that every copy of a
    key lands in one part and GX's uniqueness expectation sees them together.
    """
    parts = max(1, math.ceil(checked.rows / chunk_rows))
    if parts == 1:
        return ["TRUE"]
    column = ident(UNIQUE_KEYS[_rules(checked.name)][0][0])
    return [f"hash({column}) % {parts} = {k}" for k in range(parts)]


def _part_frame(con: duckdb.DuckDBPyConnection, checked: _Checked, where: str) -> pd.DataFrame:
    """One part's canonical columns as pandas (what GX validates), in raw order."""
    canonical = TABLES[_rules(checked.name)]
    columns = ", ".join(ident(c) for c in canonical.names)
    query = f"SELECT {columns} FROM {ident(checked.name)} WHERE {where} ORDER BY {ROW}"
    table = con.sql(query).to_arrow_table()
    return table.cast(pa.schema([f.with_nullable(True) for f in canonical])).to_pandas()


def _raised(result: Any) -> bool:
    """Whether GX caught an exception computing ``result`` (top level or one per metric)."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return True
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


# How a part's observed value combines with the others', per expectation type (the suites only
# observe a maximum; a count-based expectation is combined from its counts instead).
_OBSERVED: dict[str, Callable[[list[Any]], Any]] = {
    "expect_column_max_to_be_between": max,
    "expect_column_min_to_be_between": min,
}
_PARTIAL = 20  # GX's SUMMARY format keeps this many unexpected values


def _merge_result(parts: list[Any]) -> Any:
    """One expectation's results on every part, as one result over the whole table.

    Counts add up, percentages are recomputed from them, the unexpected examples of the parts
    are pooled (GX keeps 20) and the outcome is a success only if every part succeeded.
    """
    merged = parts[0]
    merged.success = all(p.success for p in parts)
    raised = next((p for p in parts if _raised(p)), None)
    if raised is not None:
        merged.exception_info = raised.exception_info
    results = [p.result or {} for p in parts]
    out = dict(results[0])
    for key in ("element_count", "unexpected_count", "missing_count"):
        if key in out:
            out[key] = sum(r.get(key) or 0 for r in results)
    if "element_count" in out:
        n, missing = out["element_count"], out.get("missing_count") or 0
        bad = out.get("unexpected_count") or 0
        for key, base in (
            ("missing_percent", n),
            ("unexpected_percent", n - missing),
            ("unexpected_percent_nonmissing", n - missing),
            ("unexpected_percent_total", n),
        ):
            if key in out:
                count = missing if key == "missing_percent" else bad
                out[key] = 100 * count / base if base else None
    if len(parts) > 1:  # row numbers within one part: meaningless for the whole table
        out.pop("partial_unexpected_index_list", None)
    if "partial_unexpected_list" in out:
        pooled = [v for r in results for v in r.get("partial_unexpected_list") or []]
        out["partial_unexpected_list"] = pooled[:_PARTIAL]
    if "partial_unexpected_counts" in out:
        counts: Counter[str] = Counter()
        values: dict[str, Any] = {}
        for r in results:
            for entry in r.get("partial_unexpected_counts") or []:
                key = json.dumps(entry["value"], sort_keys=True, default=str)
                counts[key] += entry["count"]
                values[key] = entry["value"]
        out["partial_unexpected_counts"] = [
            {"value": values[k], "count": c} for k, c in counts.most_common(_PARTIAL)
        ]
    combine = _OBSERVED.get(merged.expectation_config.type)
    observed = [r["observed_value"] for r in results if r.get("observed_value") is not None]
    if combine is not None and observed:
        out["observed_value"] = combine(observed)
    merged.result = out
    return merged


def _run_gx(
    context: Any,
    con: duckdb.DuckDBPyConnection,
    checked: _Checked,
    params: dict[str, Any],
    refs: Mapping[str, str],
    chunk_rows: int,
) -> tuple[int, int]:
    """Validate the raw (cast, unfiltered) table part by part, store one merged result and
    refresh Data Docs; (passed, failed) expectations.

    GX's own runners store one result per batch; parts are validated with its ``Validator``
    instead, and the merged result is stored and rendered as one run over the whole table.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.validator.v1_validator import Validator

    name, key = checked.name, f"recsys_{checked.name}"
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=key, expectations=_expectations(name, "user_id" in refs))
    )
    definition = _batch_definition(context, name)
    parts = _parts(checked, chunk_rows)
    runs, batch_id = [], None
    table_of = {column: table for table, column in KEY_OF.items()}
    for column, keys in refs.items():
        values = con.execute(f"SELECT {ident(column)} FROM {ident(keys)}").fetchnumpy()[column]
        _VALID_KEYS[table_of[column]] = pd.Index(values)
    try:
        for where in track(parts, f"expectations on {name}", len(parts), "parts", len(parts) > 1):
            frame = _part_frame(con, checked, where)
            validator = Validator(definition, "SUMMARY", {"dataframe": frame})
            runs.append(validator.validate_expectation_suite(suite, params))
            batch_id = batch_id or validator.active_batch_id
    finally:
        _VALID_KEYS.clear()
    result = runs[0]
    per_expectation = zip(*(run.results for run in runs), strict=True)
    result.results = [_merge_result(list(same)) for same in per_expectation]
    passed = sum(r.success for r in result.results)
    failed = len(result.results) - passed
    result.success = failed == 0
    result.statistics.update(
        evaluated_expectations=passed + failed,
        successful_expectations=passed,
        unsuccessful_expectations=failed,
        success_percent=100 * passed / (passed + failed) if result.results else None,
    )
    run_id = RunIdentifier(run_time=datetime.now(UTC))
    result.meta |= {
        "run_id": run_id,
        "validation_time": run_id.run_time,
        "batch_parameters": {"rows": checked.rows, "parts": len(parts)},
    }
    suite_id = ExpectationSuiteIdentifier(name=key)
    result_id = ValidationResultIdentifier(
        batch_identifier=batch_id, expectation_suite_identifier=suite_id, run_id=run_id
    )
    context.validation_results_store.store_validation_results(
        suite_validation_result=result,
        suite_validation_result_identifier=result_id,
        expectation_suite_identifier=suite_id,
    )
    context.build_data_docs(site_names=[GX_SITE], resource_identifiers=[result_id, suite_id])
    log.info("%s: %d expectations passed, %d failed (%d parts)", name, passed, failed, len(parts))
    return passed, failed


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _export(con: duckdb.DuckDBPyConnection, query: str, schema: pa.Schema, path: Path) -> None:
    """Stream a query's rows into Parquet at ``path``, cast to ``schema``; atomically (tmp +
    rename) so a crash never leaves a half file for the next stage, and always a file (empty
    if no rows) so downstream can rely on it existing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    reader = con.sql(query).to_arrow_reader(CAST_BATCH_ROWS)
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in reader:
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    tmp.replace(path)


def _write_validated(con: duckdb.DuckDBPyConnection, checked: _Checked, path: Path) -> None:
    """Valid rows in raw order with the canonical schema, non-null key fields included; extras
    follow."""
    canonical = list(TABLES[_rules(checked.name)])  # the cast put these first, nullable
    schema = pa.schema(canonical + list(checked.schema)[len(canonical) :])
    columns = ", ".join(ident(c) for c in schema.names)
    query = f"SELECT {columns} FROM {ident(checked.name)} WHERE {REASON} IS NULL ORDER BY {ROW}"
    _export(con, query, schema, path)


def _write_quarantine(con: duckdb.DuckDBPyConnection, checked: _Checked, path: Path) -> None:
    """The bad rows in raw order, every column, and the reason (a raw ``reason`` column is kept
    as ``raw_reason``: ours is the one that counts)."""
    raw = {REASON_COLUMN: f"raw_{REASON_COLUMN}"}
    fields = [f.with_name(raw.get(f.name, f.name)) for f in checked.schema]
    schema = pa.schema([*fields, pa.field(REASON_COLUMN, pa.string())])
    columns = [f"{ident(f.name)} AS {ident(raw.get(f.name, f.name))}" for f in checked.schema]
    query = f"""
        SELECT {", ".join(columns)}, {REASON} AS {REASON_COLUMN} FROM {ident(checked.name)}
        WHERE {REASON} IS NOT NULL ORDER BY {ROW}
    """
    _export(con, query, schema, path)


def _too_many_bad(
    result: TableResult, max_bad_fraction: float, quarantine: Path, report: Path
) -> DataValidationError:
    reason, count = max(result.reasons.items(), key=lambda kv: kv[1])
    column = REASON_COLUMNS.get(reason) or reason.partition("_")[2]
    share = result.rows_quarantined / result.rows_in
    return DataValidationError(
        f"{_file_label(result.table)}: {result.rows_quarantined} of {result.rows_in} rows "
        f"({share:.1%}) failed row checks, above max_bad_fraction={max_bad_fraction:.1%}. "
        f"Biggest reason: '{reason}' on column '{column}' ({count} rows). Inspect the rows in "
        f"{quarantine} and the report {report}; fix the export, or raise max_bad_fraction if "
        "this is expected.",
        table=result.table,
        column=column,
        count=count,
    )


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def validate_dataset(
    raw_dir: Path,
    validated_dir: Path,
    quarantine_dir: Path,
    reports_dir: Path,
    max_bad_fraction: float = DEFAULTS.max_bad_fraction,
    now: datetime | None = None,
    memory_limit: str = DEFAULTS.memory_limit,
    gx_chunk_rows: int = DEFAULTS.gx_chunk_rows,
) -> ValidationResult:
    """Validate the raw tables, write validated + quarantined Parquet and the Data Docs report.

    Table-level problems raise :class:`DataValidationError` before anything is written. When a
    table has more than ``max_bad_fraction`` bad rows, the quarantine files and the report are
    still written (they are what you need to debug it) but the validated folder is left untouched
    and the error is raised. ``now`` (default: the current time, naive means UTC) is the limit for
    event timestamps; tests pin it for reproducibility. ``memory_limit`` bounds DuckDB (it spills
    to a scratch folder beside ``validated_dir`` beyond it) and ``gx_chunk_rows`` the rows that GX
    holds in pandas at once.
    """
    raw_dir, validated_dir = Path(raw_dir), Path(validated_dir)
    quarantine_dir, reports_dir = Path(quarantine_dir), Path(reports_dir)
    clock = pd.Timestamp(now if now is not None else datetime.now(UTC))
    clock = clock.tz_localize("UTC") if clock.tzinfo is None else clock.tz_convert("UTC")

    # Table level first: fail fast, before the seconds that casting and GX cost.
    sources = {name: _open_raw(raw_dir, name) for name in TABLE_ORDER}
    validated_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".validate-", dir=validated_dir.parent) as tmp:
        scratch = Path(tmp)
        con = connect_duckdb(memory_limit, scratch / "spill", database=scratch / "checks.duckdb")
        try:
            return _validate(
                con, raw_dir, sources, scratch, validated_dir, quarantine_dir, reports_dir,
                max_bad_fraction, clock, gx_chunk_rows,
            )  # fmt: skip
        finally:
            con.close()


def _validate(
    con: duckdb.DuckDBPyConnection,
    raw_dir: Path,
    sources: Mapping[str, pq.ParquetFile | None],
    scratch: Path,
    validated_dir: Path,
    quarantine_dir: Path,
    reports_dir: Path,
    max_bad_fraction: float,
    clock: pd.Timestamp,
    gx_chunk_rows: int,
) -> ValidationResult:
    """:func:`validate_dataset` once the tables are open and the scratch database is made."""
    checked: dict[str, _Checked] = {}
    refs: dict[str, str] = {}  # KEY_OF column -> the table of keys that passed validation
    for name, source in sources.items():
        if source is None:
            continue
        cast = scratch / f"{name}.parquet"
        schema = _cast_file(name, source, table_path(raw_dir, name), cast)
        interactions = _rules(name) == "interactions"
        case = _reason_case(name, clock, refs if interactions else {})
        checked[name] = _check_rows(con, name, cast, schema, case)
        cast.unlink()  # the checked table holds the rows now
        if name in KEY_OF:
            refs[KEY_OF[name]] = _valid_keys(con, checked[name])
    results = {name: table.result() for name, table in checked.items()}

    docs_dir = reports_dir / "data_docs"
    context = _gx_context(reports_dir, docs_dir)
    for name, table in checked.items():
        params: dict[str, Any] = {"now": clock.to_pydatetime()}
        table_refs = refs if _rules(name) == "interactions" else {}
        result = results[name]
        result.expectations_passed, result.expectations_failed = _run_gx(
            context, con, table, params, table_refs, gx_chunk_rows
        )
    report_path = docs_dir / "index.html"

    failures: list[DataValidationError] = []
    for name, table in checked.items():
        quarantine = table_path(quarantine_dir, name)
        _write_quarantine(con, table, quarantine)
        result = results[name]
        if result.rows_in and result.rows_quarantined / result.rows_in > max_bad_fraction:
            failures.append(_too_many_bad(result, max_bad_fraction, quarantine, report_path))
    if failures:
        for failure in failures[1:]:
            log.error("%s", failure)
        raise failures[0]

    for name, table in checked.items():
        _write_validated(con, table, table_path(validated_dir, name))
        r = results[name]
        log.info(
            "%s: %d rows in, %d valid, %d quarantined %s",
            *(r.table, r.rows_in, r.rows_valid, r.rows_quarantined, r.reasons or ""),
        )
    return ValidationResult(tables=results, report_path=report_path, quarantine_dir=quarantine_dir)


def print_summary(result: ValidationResult, console: Console) -> None:
    """One table row per validated table plus where to find the report and the bad rows."""
    from rich.table import Table

    table = Table(title="Data validation")
    for column in ("table", "rows in", "valid", "quarantined", "top reasons"):
        table.add_column(column, justify="left" if column in ("table", "top reasons") else "right")
    table.add_column("expectations passed/failed", justify="right")
    rank = {"interactions": 0, "items": 1, "users": 2, "holdout": 3}  # the table people look at
    for item in sorted(result.tables.values(), key=lambda r: rank.get(r.table, 99)):
        style = "red" if item.expectations_failed or item.rows_quarantined else None
        rows = (f"{n:,}" for n in (item.rows_in, item.rows_valid, item.rows_quarantined))
        top = sorted(item.reasons.items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{reason} ({count})" for reason, count in top) or "-"
        outcome = f"{item.expectations_passed}/{item.expectations_failed}"
        table.add_row(item.table, *rows, reasons, outcome, style=style)
    console.print(table)
    console.print(f"Report: {result.report_path}")
    console.print(f"Quarantine: {result.quarantine_dir}")
