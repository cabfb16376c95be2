"""Quoting for the SQL the platform builds for DuckDB: one place, so no name or path is ever
spliced into a query as code.

Paths, formats and settings go in as string literals (``COPY`` and table functions take no
bound parameters); column names from a retailer's files go in as quoted identifiers (they can
hold spaces, dashes, reserved words or quotes of their own).
"""

from __future__ import annotations

from pathlib import Path


def sql_str(value: str | Path) -> str:
    """A SQL string literal: single quotes doubled (DuckDB has no backslash escapes)."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier: double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def parquet(path: str | Path) -> str:
    """``read_parquet('<path>')`` with the path quoted."""
    return f"read_parquet({sql_str(path)})"
