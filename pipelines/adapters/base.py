"""What every dataset adapter shares: the interface, the summary, and a canonical table writer.

An adapter turns one public or retailer layout into the canonical raw tables of
``recsys/core/schema.py`` (plus an optional ``holdout`` with the interactions schema). Everything
runs through DuckDB: sources are read with ``read_csv`` / ``read_parquet``, reshaped in SQL and
written with ``COPY ... TO ... (FORMAT PARQUET)``, so a 30M-row export streams through a bounded
amount of memory (DuckDB spills to a temp folder beyond ``memory_limit``) instead of landing in a
pandas frame.

Bad values fail loudly rather than turning into NULLs: every cast from a source column goes
through :meth:`TableWriter.checked`, which raises a tagged DuckDB error on the first value that
does not parse, and the writer turns that into a :class:`DatasetImportError` naming the file,
the column, the value and the option that fixes it.
"""

from __future__ import annotations

import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import pyarrow as pa

from recsys.core.schema import INTERACTIONS, TABLES, table_path

if TYPE_CHECKING:
    from recsys.core.settings import Settings
from recsys.core.sql import connect_duckdb, ident, parquet, sql_str
from recsys.core.terminal import progress_bar

# The tables an import may write; the holdout is interaction data kept out of training.
CANONICAL: dict[str, pa.Schema] = {**TABLES, "holdout": INTERACTIONS}
TABLE_ORDER: tuple[str, ...] = ("interactions", "holdout", "items", "users")

# DuckDB spills sorts, joins and aggregates to disk beyond this, so a large import stays within a
# few GB whatever the machine has (DuckDB's own default is 80% of RAM).
DEFAULT_MEMORY_LIMIT = "2GB"

_BAD_VALUE_TAG = "recsys-bad-value"
_BAD_VALUE_RE = re.compile(rf"{_BAD_VALUE_TAG}\[(?P<column>.*?)\]:(?P<value>.*)", re.S)
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class DatasetImportError(ValueError):
    """An input cannot be imported as given; the message names the file, column and the fix."""


@dataclass
class ImportSummary:
    """What an import wrote: rows per table, wall time, and how the source was interpreted.

    ``notes`` carry the decisions a user must know to read the results right (e.g. that a data
    set without timestamps got a fixed one, or which ratings count as purchases).
    """

    format: str
    counts: dict[str, int]
    seconds: float
    notes: list[str] = field(default_factory=list)
    out_dir: Path | None = None


def sql_type(dtype: pa.DataType) -> str:
    """The DuckDB type whose Parquet output pyarrow reads back as ``dtype``."""
    if pa.types.is_string(dtype):
        return "VARCHAR"
    if pa.types.is_float64(dtype):
        return "DOUBLE"
    if pa.types.is_int32(dtype):
        return "INTEGER"
    if pa.types.is_boolean(dtype):
        return "BOOLEAN"
    if pa.types.is_timestamp(dtype) and dtype.tz is not None:
        return "TIMESTAMPTZ"  # written as timestamp[us, UTC] with TimeZone='UTC'
    raise TypeError(f"no DuckDB type for canonical type {dtype}")


def canonical_select(
    table: str, exprs: Mapping[str, str], extras: Mapping[str, str] | None = None
) -> str:
    """A SELECT list in the canonical column order and types.

    ``exprs`` maps canonical columns to SQL expressions; absent optional columns become typed
    NULLs so every table has the full schema. ``extras`` (output name -> expression) follow
    the canonical columns untouched: source attributes the platform has no slot for.
    """
    schema = CANONICAL[table]
    unknown = set(exprs) - set(schema.names)
    if unknown:
        raise ValueError(f"{table}: not canonical columns: {sorted(unknown)}")
    parts = [
        f"CAST({exprs.get(f.name, 'NULL')} AS {sql_type(f.type)}) AS {ident(f.name)}"
        for f in schema
    ]
    for name, expr in (extras or {}).items():
        out = f"raw_{name}" if name in schema.names else name
        parts.append(f"{expr} AS {ident(out)}")
    return ",\n       ".join(parts)


def as_varchar(expr: str, duck_type: str) -> str:
    """Ids as text; BLOB ids (e.g. ASOS's byte-string user ids) are decoded as UTF-8."""
    if duck_type.upper() == "BLOB":
        return f"decode({expr})"
    return f"CAST({expr} AS VARCHAR)"


def source_relation(path: Path, varchar: Sequence[str] = (), **csv_options: str) -> str:
    """``read_csv`` / ``read_parquet`` for ``path`` by suffix.

    CSV columns listed in ``varchar`` are read as text, not sniffed: ids keep leading zeros
    (H&M's ``0108775015``) and timestamp strings reach ``strptime`` unchanged.
    """
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return parquet(path)
    if name.endswith(_CSV_SUFFIXES):
        options = {"header": "true", **csv_options}
        if varchar:
            types = ", ".join(f"{sql_str(c)}: 'VARCHAR'" for c in dict.fromkeys(varchar))
            options["types"] = "{" + types + "}"
        args = "".join(f", {k}={v}" for k, v in options.items())
        return f"read_csv({sql_str(path)}{args})"
    raise DatasetImportError(
        f"{path}: unsupported file type; pass a CSV ({', '.join(_CSV_SUFFIXES)}) or Parquet "
        f"({', '.join(_PARQUET_SUFFIXES)}) file"
    )


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetImportError(f"{path}: {what} not found")
    return path


class TableWriter:
    """One DuckDB connection that writes canonical tables into ``out_dir``, atomically each.

    Keeps the row counts and notes that become the :class:`ImportSummary`.
    """

    def __init__(self, out_dir: Path, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []
        self.written: Callable[[int], None] = lambda rows: None  # told each table's rows
        self._spill = self.out_dir / ".duckdb_tmp"
        self.con = connect_duckdb(memory_limit, self._spill)

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def path(self, table: str) -> Path:
        return table_path(self.out_dir, table)

    def output(self, table: str) -> str:
        """The relation that reads back a table written earlier in this import."""
        return parquet(self.path(table))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def columns(self, relation: str, source: Path) -> dict[str, str]:
        """Column name -> DuckDB type of a relation (sniffs a sample; does not scan the file)."""
        try:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
        except duckdb.Error as exc:
            raise DatasetImportError(f"{source}: cannot be read: {_first_line(exc)}") from exc
        columns = {str(r[0]): str(r[1]) for r in rows}
        if len(columns) == 1 and source.name.lower().endswith(_CSV_SUFFIXES):
            self._check_ragged(source, next(iter(columns)))
        return columns

    def _check_ragged(self, source: Path, header: str) -> None:
        """A CSV whose rows have different numbers of fields sniffs as one column named after
        the whole header line (the sniffer falls back to a delimiter that never occurs), and
        the import then said "no column 'user_id'". Name the first ragged line instead."""
        delim = next((d for d in (",", ";", "\t", "|") if d in header), None)
        if delim is None:
            return
        with duckdb.connect() as con:
            con.execute(
                f"SELECT count(*) FROM read_csv({sql_str(source)}, header=true, "
                f"delim={sql_str(delim)}, store_rejects=true)"
            ).fetchall()  # the rejects are stored once the query is finished
            bad = con.execute(
                "SELECT line, error_message, csv_line FROM reject_errors ORDER BY line LIMIT 1"
            ).fetchone()
        if bad is not None:
            line, message, text = bad
            raise DatasetImportError(
                f"{source}: line {line} does not have the header's {header.count(delim) + 1} "
                f"fields ({message}): {str(text)[:200]!r}. Fix that row, or quote fields that "
                f"contain {delim!r}"
            )

    def scalar(self, sql: str) -> Any:
        row = self.con.execute(sql).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def checked(try_expr: str, source_expr: str, label: str | None = None) -> str:
        """``try_expr`` (a TRY_ cast or parse of ``source_expr``), failing on the first bad value.

        NULL stays NULL (validation quarantines nulls in key columns with a reason); a value that
        does not parse raises an error tagged with ``label`` (default ``source_expr``) so
        :meth:`write` can say which column and which option fixes it, not silently import a NULL.
        """
        tag = sql_str(f"{_BAD_VALUE_TAG}[{label or source_expr}]:")
        return (
            f"CASE WHEN {source_expr} IS NULL THEN NULL "
            f"WHEN ({try_expr}) IS NULL THEN error({tag} || CAST({source_expr} AS VARCHAR)) "
            f"ELSE {try_expr} END"
        )

    def write(
        self, table: str, query: str, source: Path | str, fixes: Mapping[str, str] | None = None
    ) -> int:
        """``COPY (query) TO <out_dir>/<table>.parquet``; returns the rows written.

        ``fixes`` maps a :meth:`checked` label (a source column) to what the user should do
        when a value of it does not parse.
        """
        target = self.path(table)
        tmp = target.with_suffix(".parquet.tmp")
        try:
            row = self.con.execute(
                f"COPY ({query}) TO {sql_str(tmp)} (FORMAT PARQUET, COMPRESSION zstd)"
            ).fetchone()
        except duckdb.Error as exc:
            tmp.unlink(missing_ok=True)
            raise self._explain(exc, table, source, fixes or {}) from exc
        tmp.replace(target)
        self.counts[table] = int(row[0]) if row else 0
        self.written(self.counts[table])
        return self.counts[table]

    @staticmethod
    def _explain(
        exc: duckdb.Error, table: str, source: Path | str, fixes: Mapping[str, str]
    ) -> DatasetImportError:
        message = str(exc)
        bad = _BAD_VALUE_RE.search(message)
        if bad:
            column, value = bad["column"], bad["value"].strip()
            fix = fixes.get(column, "fix the value in the source or map another column")
            return DatasetImportError(
                f"{source}: column '{column}' has a value that cannot be read ({value[:80]!r}); "
                f"{fix}"
            )
        return DatasetImportError(f"{source}: cannot be imported as {table}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class DatasetAdapter(ABC):
    """One source layout -> the canonical raw tables.

    Subclasses set ``name`` (what ``recsys data import <name>`` selects), the options they take,
    and implement :meth:`write`. :meth:`import_dataset` owns what all of them share: option
    checks, the DuckDB connection, timing and the summary.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()

    def import_dataset(self, out_dir: Path, **options: Any) -> ImportSummary:
        """Write the canonical tables of this source into ``out_dir`` (normally the raw folder).

        Options left at None are ignored, so a CLI can pass every flag it has.
        """
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - self.options - {"memory_limit"})
        if unknown:
            takes = ", ".join(_flag(o) for o in sorted(self.options)) or "no options"
            raise DatasetImportError(
                f"{', '.join(_flag(o) for o in unknown)}: not an option of the '{self.name}' "
                f"format (it takes: {takes})"
            )
        started = time.perf_counter()
        writer = TableWriter(Path(out_dir), given.pop("memory_limit", DEFAULT_MEMORY_LIMIT))
        try:
            # a bar over the tables: each is one DuckDB COPY, which reports no progress itself
            with progress_bar(f"import {self.name}", None, "rows") as bar:
                writer.written = bar.advance
                self.write(writer, **given)
        finally:
            writer.close()
        counts = {t: writer.counts[t] for t in TABLE_ORDER if t in writer.counts}
        for table in TABLE_ORDER:  # a users table left from another data set would dangle
            stale = table_path(Path(out_dir), table)
            if table not in counts and stale.exists():
                stale.unlink()
                writer.note(f"removed {stale.name} left from a previous data set")
        seconds = time.perf_counter() - started
        return ImportSummary(self.name, counts, seconds, writer.notes, Path(out_dir))

    @abstractmethod
    def write(self, writer: TableWriter, **options: Any) -> None:
        """Write ``interactions`` and ``items`` (and optionally ``users``, ``holdout``)."""


def _flag(option: str) -> str:
    return "DIR (the folder argument)" if option == "path" else "--" + option.replace("_", "-")


def require_dir(path: Path | str | None, adapter: str, expected: Sequence[str]) -> Path:
    """The dataset folder of a folder-based format, with an error that says what goes in it."""
    if path is None:
        raise DatasetImportError(
            f"the '{adapter}' format needs the data set's folder: recsys data import {adapter} DIR "
            f"(DIR holds {', '.join(expected)})"
        )
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetImportError(
            f"{folder}: not a folder; pass the folder that holds {', '.join(expected)}"
        )
    return folder


def replace_dataset(settings: Settings, staged: Path | None = None) -> list[Path]:
    """Clear everything derived from the current data set; keep model runs.

    An import replaces the data set under the data root: raw, validated, quarantine and feature
    tables, and the Feast registry and online store (whose materialization watermarks refer to
    the old data) are removed. Model runs (``artifacts/``) and their vector index stay: they are
    results, not inputs. With ``staged`` (a folder an adapter wrote into), that folder is
    validated first (:func:`check_staged`) and only then becomes the raw folder, so an import
    that fails half-way or fails validation leaves the old data set intact.
    Returns the paths that were removed.
    """
    if staged is not None:
        check_staged(settings, Path(staged))
    removed = []
    for folder in (
        settings.raw_dir,
        settings.validated_dir,
        settings.quarantine_dir,
        settings.features_dir,
        settings.feast_dir,
    ):
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    if staged is not None:
        settings.raw_dir.parent.mkdir(parents=True, exist_ok=True)
        Path(staged).replace(settings.raw_dir)
    return removed


def check_staged(settings: Settings, staged: Path) -> None:
    """Validate an import's staged tables beside the working data set, before any swap.

    Raises :class:`~pipelines.validate.DataValidationError` (an empty table, a missing
    column, too many bad rows) with the working data set untouched; the rejected import's
    quarantine and report stay in :func:`rejected_dir` to debug it.
    """
    from pipelines.validate import validate_dataset

    check = rejected_dir(settings)
    shutil.rmtree(check, ignore_errors=True)
    validate_dataset(
        staged, check / "validated", check / "quarantine", check / "reports",
        max_bad_fraction=settings.validation.max_bad_fraction,
        memory_limit=settings.validation.memory_limit,
        gx_chunk_rows=settings.validation.gx_chunk_rows,
    )  # fmt: skip
    shutil.rmtree(check)  # it passed: nothing to keep


def rejected_dir(settings: Settings) -> Path:
    """Where the checks of the last rejected import are kept."""
    return settings.data_dir / "import.rejected"
