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
The row checks themselves are plain pandas: quarantine needs a per-row reason, which GX does not
give cheaply, and the pandas code is the single source of truth for what lands downstream.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.core.schema import AGE_BOUNDS, EVENT_TYPES, REQUIRED_COLUMNS, TABLES, table_path
from recsys.core.terminal import track

# GX phones home and draws progress bars unless told otherwise; the variable must be set before
# great_expectations is imported. GX itself is imported inside the functions that use it, because
# the import alone takes seconds and most CLI commands never validate.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

if TYPE_CHECKING:
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
    """A table after casting and row checks, before anything is written."""

    name: str
    table: pa.Table  # cast to the canonical types, all rows, extra columns kept
    frame: pd.DataFrame  # the canonical columns of ``table`` as pandas, for checks and GX
    reasons: pd.Series  # one reason per row, None where the row is valid

    @property
    def valid_mask(self) -> np.ndarray:
        return self.reasons.isna().to_numpy()

    def result(self) -> TableResult:
        counts = Counter(self.reasons.dropna())
        bad, rows = sum(counts.values()), self.table.num_rows
        return TableResult(self.name, rows, rows - bad, bad, dict(counts.most_common()))


# --------------------------------------------------------------------------------------------
# Table level: read, required columns, casting
# --------------------------------------------------------------------------------------------


def _rules(name: str) -> str:
    """The canonical table whose schema and rules apply to table ``name``."""
    return RULES_OF.get(name, name)


def _file_label(name: str) -> str:
    return f"{name}.parquet"


def _read_raw(raw_dir: Path, name: str) -> pa.Table | None:
    """Read a raw table; None for an absent optional table, an error for an absent required one."""
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
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(
            f"{_file_label(name)}: cannot be read as Parquet (file: {path}): {exc}. "
            "Re-export the table.",
            table=name,
        ) from exc


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
    """Check required columns and cast to the canonical schema; extra columns pass through.

    Optional canonical columns that the export lacks are added as nulls, so every downstream
    reader can rely on the full schema. All fields are nullable here: rows with nulls in key
    columns still have to reach the quarantine.
    """
    schema = TABLES[_rules(name)]
    for column in REQUIRED_COLUMNS[_rules(name)]:
        if column not in raw.column_names:
            raise DataValidationError(
                f"{_file_label(name)}: required column '{column}' is missing (file: {source}). "
                "Fix the export or map the column.",
                table=name,
                column=column,
            )

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


# --------------------------------------------------------------------------------------------
# Row level: one reason per row, the first rule that applies
# --------------------------------------------------------------------------------------------


def _flag(reasons: pd.Series, mask: pd.Series | np.ndarray, reason: str) -> None:
    """Give ``reason`` to rows in ``mask`` that have no reason yet (first rule wins)."""
    reasons[np.asarray(mask, dtype=bool) & reasons.isna().to_numpy()] = reason


def _flag_duplicates(reasons: pd.Series, frame: pd.DataFrame, keys: list[str], reason: str) -> None:
    """Quarantine repeats of a key among rows still valid, keeping the first.

    Duplicates are looked for only among rows that passed every other rule, so that when the
    first copy is bad (e.g. a negative price) a later good copy is kept rather than both lost.
    """
    dup = frame.loc[reasons.isna(), keys].duplicated(keep="first")
    reasons.loc[dup.index[dup.to_numpy()]] = reason


def _row_reasons(
    name: str, frame: pd.DataFrame, now: pd.Timestamp, refs: Mapping[str, np.ndarray]
) -> pd.Series:
    """One reason per row (None: valid); ``refs`` holds the valid keys interactions may use."""
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    name = _rules(name)
    for column in REQUIRED_COLUMNS[name]:
        _flag(reasons, frame[column].isna(), f"null_{column}")

    if name == "interactions":
        _flag(reasons, ~frame["event_type"].isin(EVENT_TYPES), "invalid_event_type")
        _flag(reasons, frame["price"] < 0, "negative_price")
        _flag(reasons, frame["timestamp"] > now, "future_timestamp")
        for column, valid in refs.items():
            _flag(reasons, ~frame[column].isin(valid), f"unknown_{column}")
        _flag_duplicates(reasons, frame, list(EVENT_KEY), "duplicate_event")
    elif name == "items":
        _flag(reasons, frame["price"] < 0, "negative_price")
        _flag_duplicates(reasons, frame, ["item_id"], "duplicate_item_id")
    elif name == "users":
        low, high = AGE_BOUNDS
        age = frame["age"]
        # A missing age is allowed (many shops never ask); only impossible values are bad.
        _flag(reasons, age.notna() & ((age < low) | (age > high)), "age_out_of_range")
        _flag_duplicates(reasons, frame, ["user_id"], "duplicate_user_id")
    return reasons


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
    """The suite for one table: the GX mirror of the row rules in ``_row_reasons``.

    Values that change per run (the clock, the valid key sets) are suite parameters
    (``$PARAMETER``) supplied at run time, so the stored suite stays small and stable. The key
    sets get a ``description`` because otherwise Data Docs renders every id in the set.
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
            _reference(gxe, "item_id", "an item", "items"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(EVENT_KEY)),
        ]
        if with_users:
            out.append(_reference(gxe, "user_id", "a user", "users"))
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


def _reference(gxe: Any, column: str, what: str, table: str) -> Any:
    """Referential integrity: ``column`` values are among the ``<column>s`` suite parameter."""
    return gxe.ExpectColumnValuesToBeInSet(
        column=column,
        value_set={"$PARAMETER": f"{column}s"},
        description=f"{column} must reference {what} that passed validation in "
        f"{table}.parquet (referential integrity)",
    )


def _referenced(frame: pd.DataFrame, column: str, valid: np.ndarray) -> list[str]:
    """The valid keys that ``frame[column]`` actually uses.

    On this batch, "value in the valid keys" and "value in the valid keys it uses" are the same
    expectation, but GX serialises the value set hundreds of times per run (pydantic ``.dict()``
    on every metric lookup: ~3 s for 30k ids), so a catalogue's never-touched items are dropped.
    """
    used = pd.unique(frame[column].dropna())
    return sorted(np.intersect1d(used.astype(str), np.asarray(valid, dtype=str)).tolist())


def _run_gx(
    context: Any, checked: _Checked, params: dict[str, Any], with_users: bool
) -> tuple[int, int]:
    """Validate the raw (cast, unfiltered) table and refresh Data Docs; (passed, failed)."""
    import great_expectations as gx

    name, key = checked.name, f"recsys_{checked.name}"
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=key, expectations=_expectations(name, with_users))
    )
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=key, data=_batch_definition(context, name), suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=key,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[GX_SITE])],
            result_format="SUMMARY",
        )
    )
    result = checkpoint.run(
        batch_parameters={"dataframe": checked.frame}, expectation_parameters=params
    )
    stats = [run.statistics for run in result.run_results.values()]
    passed = sum(int(s["successful_expectations"]) for s in stats)
    failed = sum(int(s["unsuccessful_expectations"]) for s in stats)
    log.info("%s: %d expectations passed, %d failed", name, passed, failed)
    return passed, failed


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write atomically (tmp + rename) so a crash never leaves a half file for the next stage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
    tmp.replace(path)


def _write_validated(checked: _Checked, validated_dir: Path) -> None:
    """Valid rows with the canonical schema, non-null key fields included; extras follow."""
    canonical = list(TABLES[_rules(checked.name)])  # ``_conform`` put these first, nullable
    schema = pa.schema(canonical + list(checked.table.schema)[len(canonical) :])
    valid = checked.table.filter(pa.array(checked.valid_mask)).cast(schema)
    _write_parquet(valid, table_path(validated_dir, checked.name))


def _write_quarantine(checked: _Checked, quarantine_dir: Path) -> Path:
    """Always write the file (empty if no bad rows) so downstream can rely on it existing."""
    bad = ~checked.valid_mask
    rows = checked.table.filter(pa.array(bad))
    if REASON_COLUMN in rows.column_names:  # keep the raw column, but ours is the one that counts
        rows = rows.rename_columns({REASON_COLUMN: f"raw_{REASON_COLUMN}"})
    reasons = pa.array(checked.reasons[bad].tolist(), type=pa.string())
    path = table_path(quarantine_dir, checked.name)
    _write_parquet(rows.append_column(REASON_COLUMN, reasons), path)
    return path


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
    max_bad_fraction: float = 0.05,
    now: datetime | None = None,
) -> ValidationResult:
    """Validate the raw tables, write validated + quarantined Parquet and the Data Docs report.

    Table-level problems raise :class:`DataValidationError` before anything is written. When a
    table has more than ``max_bad_fraction`` bad rows, the quarantine files and the report are
    still written (they are what you need to debug it) but the validated folder is left untouched
    and the error is raised. ``now`` (default: the current time, naive means UTC) is the limit for
    event timestamps; tests pin it for reproducibility.
    """
    raw_dir, validated_dir = Path(raw_dir), Path(validated_dir)
    quarantine_dir, reports_dir = Path(quarantine_dir), Path(reports_dir)
    clock = pd.Timestamp(now if now is not None else datetime.now(UTC))
    clock = clock.tz_localize("UTC") if clock.tzinfo is None else clock.tz_convert("UTC")

    # Table level first: fail fast, before the seconds that GX costs.
    raws = {name: _read_raw(raw_dir, name) for name in TABLE_ORDER}
    checked: dict[str, _Checked] = {}
    keys: dict[str, np.ndarray] = {}  # KEY_OF column -> the keys that passed validation
    for name, raw in raws.items():
        if raw is None:
            continue
        if raw.num_rows == 0:
            raise DataValidationError(
                f"{table_path(raw_dir, name)} has no rows: an empty {name} table would leave "
                "nothing to learn from or serve; check the export (a header-only file?)",
                table=name,
                count=0,
            )
        conformed = _conform(name, raw, table_path(raw_dir, name))
        # Only the canonical columns go to pandas: extras may hold types pandas handles badly, and
        # converting fewer string columns matters on tens of millions of rows.
        frame = conformed.select(TABLES[_rules(name)].names).to_pandas()
        refs = keys if _rules(name) == "interactions" else {}
        checked[name] = _Checked(name, conformed, frame, _row_reasons(name, frame, clock, refs))
        if name in KEY_OF:
            keys[KEY_OF[name]] = frame.loc[checked[name].valid_mask, KEY_OF[name]].unique()
    results = {name: table.result() for name, table in checked.items()}

    docs_dir = reports_dir / "data_docs"
    context = _gx_context(reports_dir, docs_dir)
    for name, table in track(checked.items(), "expectation suites", len(checked), "tables"):
        params: dict[str, Any] = {"now": clock.to_pydatetime()}
        if _rules(name) == "interactions":
            params |= {f"{c}s": _referenced(table.frame, c, valid) for c, valid in keys.items()}
        result = results[name]
        result.expectations_passed, result.expectations_failed = _run_gx(
            context, table, params, with_users="user_id" in keys
        )
    report_path = docs_dir / "index.html"

    failures: list[DataValidationError] = []
    for name, table in checked.items():
        quarantine = _write_quarantine(table, quarantine_dir)
        result = results[name]
        if result.rows_in and result.rows_quarantined / result.rows_in > max_bad_fraction:
            failures.append(_too_many_bad(result, max_bad_fraction, quarantine, report_path))
    if failures:
        for failure in failures[1:]:
            log.error("%s", failure)
        raise failures[0]

    for table in checked.values():
        _write_validated(table, validated_dir)
        r = results[table.name]
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
