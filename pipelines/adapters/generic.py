"""``generic``: any CSV or Parquet export, mapped onto the canonical columns by name.

A retailer's export rarely uses our column names, event vocabulary or timestamp encoding, so all
three are options rather than code: ``--map user_id=customer_id,...`` (canonical=source),
``--event-map purchase=buy,view=click`` (or ``--event-type purchase`` for a log of one kind) and
``--timestamp-format`` / ``--timestamp-unit``. Source columns with a canonical name are used
without a mapping. Every mapping is checked against the files' headers before anything is
written, so a typo fails in a second with the columns that do exist, not after a 30M-row scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.adapters.base import (
    CANONICAL,
    DatasetAdapter,
    DatasetImportError,
    TableWriter,
    as_varchar,
    canonical_select,
    require_file,
    source_relation,
    sql_type,
)
from recsys.core.schema import EVENT_TYPES, REQUIRED_COLUMNS
from recsys.core.sql import ident, sql_str

TIMESTAMP_UNITS = ("s", "ms", "us")
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")  # fmt: skip
_ID_COLUMNS = ("user_id", "item_id", "session_id")
_EXAMPLES = {
    "map": "user_id=customer_id,item_id=article_id",
    "event-map": "purchase=buy,view=click",
}
_PLAUSIBLE_FROM = datetime(1990, 1, 1, tzinfo=UTC)  # earlier events hint at a wrong unit
# Epoch numbers per unit beyond which a value is far in the future (~year 5000): a wrong unit.
_EPOCH_LIMIT = {"s": 1e11, "ms": 1e14, "us": 1e17}


def parse_pairs(
    value: str | Mapping[str, str] | None, option: str, allowed: Sequence[str], what: str
) -> list[tuple[str, str]]:
    """``"a=b,c=d"`` (or a mapping) -> ``[("a", "b"), ("c", "d")]``.

    Bad syntax is an error, and so is a left-hand side outside ``allowed`` (``what`` it must be).
    """
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = []
        for part in (value or "").split(","):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise DatasetImportError(
                    f"--{option} {value!r}: expected comma-separated canonical=source pairs, "
                    f"e.g. --{option} {_EXAMPLES.get(option, 'a=b,c=d')}"
                )
            pairs.append((key.strip(), val.strip()))
    for canonical, source in pairs:
        if canonical not in allowed:
            raise DatasetImportError(
                f"--{option} {canonical}={source}: '{canonical}' is not {what}; "
                f"use one of {', '.join(allowed)} on the left of '='"
            )
    return pairs


@dataclass
class TimestampRule:
    """How timestamp strings or numbers of the source become UTC instants."""

    fmt: str | None = None
    unit: str | None = None

    def fix(self, column: str) -> str:
        """What to tell the user when a value of ``column`` does not parse."""
        if self.fmt:
            return (
                f"it does not match --timestamp-format {self.fmt!r}: pass the DuckDB strptime "
                "format of the column (e.g. '%Y-%m-%d %H:%M:%S', '%d/%m/%Y'), or "
                "--timestamp-unit s|ms if it holds epoch numbers"
            )
        if self.unit:
            return (
                f"--timestamp-unit {self.unit} expects epoch numbers in '{column}' "
                "(is the unit right? s = seconds, ms = milliseconds, us = microseconds)"
            )
        return (
            "pass --timestamp-format '<DuckDB strptime format>' (e.g. '%Y-%m-%d %H:%M:%S') "
            "or --timestamp-unit s|ms if it holds epoch numbers"
        )

    def expr(self, column: str, duck_type: str, source: Path) -> str:
        """A TRY_ expression turning ``column`` into a timestamp (NULL where it does not parse)."""
        col = ident(column)
        base = duck_type.split("(")[0].upper()
        if self.unit:
            if base not in _NUMERIC and base != "VARCHAR":
                raise DatasetImportError(
                    f"{source}: column '{column}' is {duck_type}, not epoch numbers; "
                    "drop --timestamp-unit"
                )
            number = f"TRY_CAST({col} AS DOUBLE)"
            convert = {
                "s": f"to_timestamp({number})",
                "ms": f"epoch_ms(CAST(round({number}) AS BIGINT))",
                "us": f"make_timestamp(CAST(round({number}) AS BIGINT))",
            }[self.unit]
            return f"CASE WHEN abs({number}) < {_EPOCH_LIMIT[self.unit]:.0f} THEN {convert} END"
        if base in _NUMERIC:
            raise DatasetImportError(
                f"{source}: column '{column}' holds numbers ({duck_type}): epoch seconds and "
                "milliseconds look alike, so say which with --timestamp-unit s|ms"
            )
        if base in ("VARCHAR", "BLOB"):
            text = as_varchar(col, base)
            iso = f"TRY_CAST({text} AS TIMESTAMPTZ)"
            if self.fmt:  # ISO-8601 still reads, e.g. a launch_date next to a custom timestamp
                return f"coalesce(try_strptime({text}, {sql_str(self.fmt)}), {iso})"
            return iso
        return f"TRY_CAST({col} AS TIMESTAMPTZ)"  # DATE / TIMESTAMP: naive read as UTC


@dataclass
class _Plan:
    """One source file: where it is, how to read it, and which column feeds each canonical one."""

    table: str
    path: Path
    relation: str
    types: dict[str, str]  # source column -> DuckDB type
    columns: dict[str, str]  # canonical -> source column
    extras: list[str]


class GenericAdapter(DatasetAdapter):
    """CSV or Parquet files with a column mapping."""

    name = "generic"
    description = "your own CSV/Parquet files with a column mapping"
    options = frozenset(
        {"interactions", "items", "users", "holdout", "map", "event_type", "event_map",
         "timestamp_format", "timestamp_unit"}
    )  # fmt: skip

    def write(self, writer: TableWriter, **options: Any) -> None:
        if options.get("interactions") is None:
            raise DatasetImportError(
                "the 'generic' format takes files, not a folder: recsys data import generic "
                "--interactions FILE [--items FILE] [--users FILE] [--holdout FILE] "
                "[--map user_id=<your column>,...]"
            )
        known = sorted({c for schema in CANONICAL.values() for c in schema.names})
        mapping = dict(parse_pairs(options.get("map"), "map", known, "a canonical column"))
        pairs = parse_pairs(options.get("event_map"), "event-map", EVENT_TYPES, "an event type")
        events = {source: canonical for canonical, source in pairs}  # many values may map to one
        constant = options.get("event_type")
        if constant is not None and constant not in EVENT_TYPES:
            raise DatasetImportError(
                f"--event-type {constant!r}: expected one of {', '.join(EVENT_TYPES)}"
            )
        fmt, unit = options.get("timestamp_format"), options.get("timestamp_unit")
        if fmt and unit:
            raise DatasetImportError("pass either --timestamp-format or --timestamp-unit, not both")
        if unit is not None and unit not in TIMESTAMP_UNITS:
            raise DatasetImportError(
                f"--timestamp-unit {unit!r}: expected one of {', '.join(TIMESTAMP_UNITS)}"
            )
        rule = TimestampRule(fmt, unit)

        plans = {
            table: self._plan(writer, table, Path(options[table]), mapping, constant is not None)
            for table in ("interactions", "holdout", "items", "users")
            if options.get(table) is not None
        }
        self._check_mapping_used(mapping, plans)

        for plan in plans.values():
            self._write(writer, plan, rule, events, constant)
        if "items" not in plans:
            sources = [writer.path(t) for t in ("interactions", "holdout") if t in plans]
            listed = "[" + ", ".join(sql_str(p) for p in sources) + "]"
            n = writer.write(
                "items",
                f"SELECT {canonical_select('items', {'item_id': 'item_id'})} "
                f"FROM (SELECT DISTINCT item_id FROM read_parquet({listed}))",
                source=plans["interactions"].path,
            )
            writer.note(
                f"no --items: items = the {n:,} distinct item ids of the interactions, "
                "without attributes (shown as 'unknown')"
            )
        self._describe_events(writer, plans)

    # ------------------------------------------------------------------ planning
    @staticmethod
    def _plan(
        writer: TableWriter, table: str, path: Path, mapping: dict[str, str], constant_event: bool
    ) -> _Plan:
        require_file(path, f"--{table} file")
        sniffed = writer.columns(source_relation(path), path)
        schema = CANONICAL[table]
        required = REQUIRED_COLUMNS["interactions" if table == "holdout" else table]
        columns: dict[str, str] = {}
        for field in schema:
            name = field.name
            source = mapping.get(name)
            if source is not None and source in sniffed:
                columns[name] = source
            elif source is None and name in sniffed:
                columns[name] = name
            elif name == "event_type" and constant_event:
                continue
            elif name in required:
                have = ", ".join(sniffed)
                if source is not None:
                    raise DatasetImportError(
                        f"{path}: column '{source}' (from --map {name}={source}) not found; "
                        f"the file has: {have}. Pass --map {name}=<your column>"
                    )
                fix = f"--map {name}=<your column>"
                if name == "event_type":
                    fix += " or --event-type purchase (if every row is one kind of event)"
                raise DatasetImportError(
                    f"{path}: no column '{name}' for the {table} table; the file has: {have}. "
                    f"Pass {fix}"
                )
        used = set(columns.values())
        extras = [c for c in sniffed if c not in used]
        # Re-read CSV ids and timestamps as text: keeps leading zeros, feeds strptime verbatim.
        as_text = {*_ID_COLUMNS, *(f.name for f in schema if sql_type(f.type) == "TIMESTAMPTZ")}
        text = [c for k, c in columns.items() if k in as_text]
        relation = source_relation(path, text)
        types = writer.columns(relation, path) if text else sniffed
        return _Plan(table, path, relation, types, columns, extras)

    @staticmethod
    def _check_mapping_used(mapping: dict[str, str], plans: dict[str, _Plan]) -> None:
        """A mapping that no file can use is a typo: say so instead of importing NULLs."""
        for canonical, source in mapping.items():
            targets = [p for p in plans.values() if canonical in CANONICAL[p.table].names]
            if not targets:
                tables = [t for t, schema in CANONICAL.items() if canonical in schema.names]
                raise DatasetImportError(
                    f"--map {canonical}={source}: no file given for a table with '{canonical}' "
                    f"(pass --{tables[0]} FILE)"
                )
            if not any(p.columns.get(canonical) == source for p in targets):
                files = ", ".join(str(p.path) for p in targets)
                raise DatasetImportError(
                    f"--map {canonical}={source}: no column '{source}' in {files}; "
                    f"pass --map {canonical}=<your column>"
                )

    # ------------------------------------------------------------------ writing
    def _exprs(self, plan: _Plan, rule: TimestampRule) -> tuple[dict[str, str], dict[str, str]]:
        """Canonical column -> checked SQL expression, and the fixes for bad values."""
        schema = CANONICAL[plan.table]
        exprs: dict[str, str] = {}
        fixes: dict[str, str] = {}
        for name, source in plan.columns.items():
            col, duck_type = ident(source), plan.types[source]
            target = sql_type(schema.field(name).type)
            if target == "VARCHAR":
                exprs[name] = as_varchar(col, duck_type.upper())
                continue
            if target == "TIMESTAMPTZ":
                attempt = rule.expr(source, duck_type, plan.path)
                fixes[source] = rule.fix(source)
            elif target == "INTEGER":
                attempt = f"TRY_CAST(round(TRY_CAST({col} AS DOUBLE)) AS INTEGER)"
                fixes[source] = f"'{name}' expects whole numbers; map another column or fix it"
            else:
                attempt = f"TRY_CAST({col} AS {target})"
                fixes[source] = f"'{name}' expects {target.lower()} values; map another column"
            exprs[name] = TableWriter.checked(attempt, col, source)
        return exprs, fixes

    def _write(
        self,
        writer: TableWriter,
        plan: _Plan,
        rule: TimestampRule,
        events: dict[str, str],
        constant: str | None,
    ) -> None:
        """Write one canonical table: mapped expressions, then the source's extra columns.

        Event tables get their ``event_type`` from ``--event-map`` or ``--event-type``.
        """
        exprs, fixes = self._exprs(plan, rule)
        if "event_type" in plan.columns and events:
            cases = " ".join(f"WHEN {sql_str(s)} THEN {sql_str(d)}" for s, d in events.items())
            value = exprs["event_type"]
            exprs["event_type"] = f"CASE {value} {cases} ELSE {value} END"
        elif "event_type" in CANONICAL[plan.table].names and "event_type" not in plan.columns:
            exprs["event_type"] = sql_str(constant or "")
        extras = {c: ident(c) for c in plan.extras}
        writer.write(
            plan.table,
            f"SELECT {canonical_select(plan.table, exprs, extras)} FROM {plan.relation}",
            source=plan.path,
            fixes=fixes,
        )

    @staticmethod
    def _describe_events(writer: TableWriter, plans: dict[str, _Plan]) -> None:
        """Notes that make a wrong unit or an unmapped event value visible before validation."""
        for table in ("interactions", "holdout"):
            if table not in plans:
                continue
            path = writer.output(table)
            low, high = writer.con.execute(
                f'SELECT min("timestamp"), max("timestamp") FROM {path}'
            ).fetchone() or (None, None)
            if low is not None:
                writer.note(
                    f"{table}: timestamps from {low:%Y-%m-%d %H:%M} to {high:%Y-%m-%d %H:%M} UTC"
                )
                if low < _PLAUSIBLE_FROM or high > datetime.now(UTC):
                    writer.note(
                        f"{table}: timestamps before {_PLAUSIBLE_FROM:%Y} or in the future: "
                        "check --timestamp-unit / --timestamp-format (validation quarantines "
                        "future events)"
                    )
            known = ", ".join(sql_str(e) for e in EVENT_TYPES)
            odd = writer.con.execute(
                f"SELECT event_type, count(*) AS n FROM {path} "
                f"WHERE event_type NOT IN ({known}) OR event_type IS NULL "
                "GROUP BY ALL ORDER BY n DESC LIMIT 5"
            ).fetchall()
            if odd:
                listed = ", ".join(f"{v!r} ({n:,})" for v, n in odd)
                writer.note(
                    f"{table}: event types outside {'/'.join(EVENT_TYPES)}: {listed}; validation "
                    "quarantines these rows: map them with --event-map view=<value>,..."
                )
