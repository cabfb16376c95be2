"""``hm``: the H&M Personalized Fashion Recommendations (Kaggle) layout.

``transactions_train.csv`` (31.8M purchases, one row per unit, day resolution), ``articles.csv``
(105k articles, ~25 attribute columns) and ``customers.csv`` (1.4M customers). The ids are what
make this layout fragile: ``article_id`` has a leading zero (``0108775015``) that a sniffed CSV
read turns into an integer, so ids are always read as text.

A customer buying two units of an article on one day appears as two identical rows; the
platform's event key is (user, item, timestamp, event type) and the timestamp is a day here, so
repeats are merged into one purchase whose ``value`` is the number of units (validation would
otherwise quarantine ~9% of the rows as duplicate events and fail the run).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pipelines.adapters.base import (
    DatasetAdapter,
    DatasetImportError,
    TableWriter,
    canonical_select,
    require_dir,
    require_file,
    source_relation,
)
from recsys.core.sql import ident, sql_str

TRANSACTIONS = "transactions_train.csv"
ARTICLES = "articles.csv"
CUSTOMERS = "customers.csv"

# canonical item column -> articles.csv column
ITEM_COLUMNS = {
    "title": "prod_name",
    "description": "detail_desc",
    "category": "product_group_name",
    "product_type": "product_type_name",
    "colour": "colour_group_name",
    "department": "index_name",
}
# Code columns whose leading zeros are part of the value.
TEXT_COLUMNS = ("article_id", "customer_id", "product_code", "postal_code", "t_dat")


class HMAdapter(DatasetAdapter):
    """H&M's Kaggle CSVs -> canonical tables; optionally the last days as the holdout."""

    name = "hm"
    description = "H&M Personalized Fashion Recommendations (transactions/articles/customers.csv)"
    options = frozenset({"path", "holdout_days"})

    def write(self, writer: TableWriter, **options: Any) -> None:
        folder = require_dir(options.get("path"), self.name, (TRANSACTIONS, ARTICLES, CUSTOMERS))
        transactions = require_file(folder / TRANSACTIONS, f"H&M {TRANSACTIONS}")
        articles = require_file(folder / ARTICLES, f"H&M {ARTICLES}")
        holdout_days = options.get("holdout_days")
        if holdout_days is not None and int(holdout_days) < 1:
            raise DatasetImportError(f"--holdout-days {holdout_days}: expected a number >= 1")

        self._write_transactions(writer, transactions, holdout_days)
        self._write_articles(writer, articles)
        customers = folder / CUSTOMERS
        if customers.is_file():
            self._write_customers(writer, customers)
        else:
            writer.note(f"no {CUSTOMERS} in {folder}: no users table (age features stay 0)")

    @staticmethod
    def _relation(writer: TableWriter, path: Path, required: tuple[str, ...]) -> tuple[str, list]:
        """read_csv with code columns as text, after checking the columns the mapping needs."""
        columns = list(writer.columns(source_relation(path), path))
        missing = [c for c in required if c not in columns]
        if missing:
            raise DatasetImportError(
                f"{path}: column '{missing[0]}' not found (the file has: {', '.join(columns)}); "
                "this does not look like the H&M Kaggle layout: use the 'generic' format with "
                f"--map instead"
            )
        text = [c for c in TEXT_COLUMNS if c in columns]
        return source_relation(path, text), columns

    def _write_transactions(
        self, writer: TableWriter, path: Path, holdout_days: int | None
    ) -> None:
        required = ("t_dat", "customer_id", "article_id", "price")
        relation, columns = self._relation(writer, path, required)
        day = TableWriter.checked("try_strptime(t_dat, '%Y-%m-%d')", "t_dat")
        price = TableWriter.checked("TRY_CAST(price AS DOUBLE)", "price")
        channel = "sales_channel_id" in columns
        merged = f"""
            SELECT customer_id, article_id, CAST({day} AS DATE) AS day,
                   count(*) AS units, avg({price}) AS price
                   {", min(sales_channel_id) AS sales_channel_id" if channel else ""}
            FROM {relation}
            GROUP BY customer_id, article_id, day
        """
        exprs = {
            "user_id": "customer_id",
            "item_id": "article_id",
            "timestamp": "day",  # a date: midnight UTC
            "event_type": "'purchase'",
            "value": "units",
            "price": "price",
            "session_id": "customer_id || '-' || strftime(day, '%Y-%m-%d')",  # one basket a day
        }
        extras = {"sales_channel_id": "sales_channel_id"} if channel else {}
        fixes = {
            "t_dat": "H&M's t_dat is YYYY-MM-DD; fix the row or re-download the file",
            "price": "H&M's price is a number; fix the row or re-download the file",
        }
        table = "interactions" if holdout_days is None else "_transactions"
        query = f"SELECT {canonical_select('interactions', exprs, extras)} FROM ({merged})"
        rows = writer.write(table, query, source=path, fixes=fixes)
        units = int(writer.scalar(f"SELECT sum(value) FROM {writer.output(table)}") or 0)
        if units > rows:
            writer.note(
                f"{units - rows:,} of {units:,} transaction rows repeat a (customer, article, day) "
                "and were merged: value = units bought that day, price = their mean"
            )
        writer.note("timestamp = t_dat at midnight UTC; session_id = customer_id-t_dat (a basket)")
        if holdout_days is not None:
            self._split(writer, int(holdout_days))

    @staticmethod
    def _split(writer: TableWriter, days: int) -> None:
        """Move the last ``days`` days of transactions to the holdout, the rest to interactions."""
        staged, src = writer.path("_transactions"), writer.output("_transactions")
        last = writer.scalar(f'SELECT max("timestamp") FROM {src}')
        if last is None:
            raise DatasetImportError(f"{TRANSACTIONS}: no transactions to hold out")
        cutoff = last - timedelta(days=days - 1)
        stamp = sql_str(cutoff.isoformat())
        writer.write("holdout", f'SELECT * FROM {src} WHERE "timestamp" >= {stamp}', staged)
        n = writer.write("interactions", f'SELECT * FROM {src} WHERE "timestamp" < {stamp}', staged)
        writer.counts.pop("_transactions", None)
        staged.unlink()
        writer.note(
            f"holdout: the last {days} day(s), {cutoff:%Y-%m-%d} to {last:%Y-%m-%d} "
            f"({writer.counts['holdout']:,} purchases); interactions: {n:,} before "
            f"{cutoff:%Y-%m-%d}"
        )
        if n == 0:
            raise DatasetImportError(
                f"--holdout-days {days} holds out every transaction; pass fewer days"
            )

    def _write_articles(self, writer: TableWriter, path: Path) -> None:
        relation, columns = self._relation(writer, path, ("article_id",))
        exprs = {"item_id": "a.article_id"}
        exprs.update({k: f"a.{ident(v)}" for k, v in ITEM_COLUMNS.items() if v in columns})
        absent = [v for v in ITEM_COLUMNS.values() if v not in columns]
        if absent:
            writer.note(f"{ARTICLES} lacks {', '.join(absent)}: those attributes are NULL")
        used = {"article_id", *ITEM_COLUMNS.values()}
        extras = {c: f"a.{ident(c)}" for c in columns if c not in used}
        # Articles carry no price: the median price paid (before any holdout) stands in for it.
        exprs["price"] = "p.price"
        query = f"""
            SELECT {canonical_select("items", exprs, extras)}
            FROM {relation} a
            LEFT JOIN (SELECT item_id, median(price) AS price FROM {writer.output("interactions")}
                       GROUP BY item_id) p ON p.item_id = a.article_id
        """
        writer.write("items", query, source=path)
        writer.note("items: price = median price paid in the interactions (articles have none)")

    def _write_customers(self, writer: TableWriter, path: Path) -> None:
        relation, columns = self._relation(writer, path, ("customer_id",))
        exprs = {"user_id": "customer_id"}
        fixes = {}
        if "age" in columns:
            attempt = "TRY_CAST(round(TRY_CAST(age AS DOUBLE)) AS INTEGER)"
            exprs["age"] = TableWriter.checked(attempt, "age")
            fixes["age"] = "H&M's age is a number or empty; fix the row"
        extras = {c: ident(c) for c in columns if c not in ("customer_id", "age")}
        query = f"SELECT {canonical_select('users', exprs, extras)} FROM {relation}"
        writer.write("users", query, source=path, fixes=fixes)
