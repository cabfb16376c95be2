"""Quoting for the SQL the platform builds for DuckDB: one place, so no name or path is ever
spliced into a query as code.

Paths, formats and settings go in as string literals (``COPY`` and table functions take no
bound parameters); column names from a retailer's files go in as quoted identifiers (they can
hold spaces, dashes, reserved words or quotes of their own).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


def sql_str(value: str | Path) -> str:
    """A SQL string literal: single quotes doubled (DuckDB has no backslash escapes)."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier: double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def parquet(path: str | Path) -> str:
    """``read_parquet('<path>')`` with the path quoted."""
    return f"read_parquet({sql_str(path)})"


def connect_duckdb(
    memory_limit: str,
    temp_dir: Path,
    threads: int | None = None,
    database: Path | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection as every stage's SQL runs in (import, validation, features, on the
    driver or in a Ray task): UTC (naive timestamps read as UTC, TIMESTAMPTZ comes back in UTC),
    no progress bar (the CLI prints its own), and bounded memory: beyond ``memory_limit`` DuckDB
    spills joins, windows and sorts to ``temp_dir``. Insertion order is not kept unless a query
    asks with ``ORDER BY``: keeping it makes a ``COPY`` buffer rows, so memory grows with the
    input. ``database``: a file, for tables that may outgrow memory; default in memory.
    """
    import duckdb

    con = duckdb.connect(str(database) if database else ":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET memory_limit = {sql_str(memory_limit)}")
    con.execute(f"SET temp_directory = {sql_str(temp_dir)}")
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con
