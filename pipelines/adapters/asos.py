"""``asos``: the ASOS DSF 2020 outfit/purchase data set (user-product pairs, nothing else).

Layout: ``dsf_asos_train_with_alphanumeric_dummy_ids.parquet`` and ``..._valid_...parquet``
(``dummyUserId`` as *bytes*, ``productId`` int32), plus one-id-per-line lists of users and
products without a header. There are no timestamps, prices or attributes.

The platform needs a timestamp on every event, and inventing an order would plant signal that is
not in the data. So every train pair gets the same reference time (``--reference-time``, default
2020-01-01T00:00:00Z): no order is known, and time-windowed features (7/30-day counts) degrade to
totals. The validation pairs become the ``holdout`` one day later, exactly as given (same rows,
nothing deduplicated; duplicate pairs are counted in the notes), so the published split is the
one evaluated against.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.adapters.base import (
    DatasetAdapter,
    DatasetImportError,
    TableWriter,
    as_varchar,
    canonical_select,
    require_dir,
    require_file,
)
from recsys.core.sql import ident, parquet, sql_str

TRAIN = "dsf_asos_train_with_alphanumeric_dummy_ids.parquet"
VALID = "dsf_asos_valid_with_alphanumeric_dummy_ids.parquet"
USERS = "dsf_asos_dummy_users_with_alphanumeric_dummy_ids.csv"
PRODUCTS = "dsf_asos_productIds.csv"
USER_COLUMN, ITEM_COLUMN = "dummyUserId", "productId"
DEFAULT_REFERENCE_TIME = "2020-01-01T00:00:00Z"


def parse_reference_time(value: str | datetime | None) -> datetime:
    """ISO-8601 (``Z`` allowed) -> an aware UTC datetime; naive means UTC."""
    value = DEFAULT_REFERENCE_TIME if value is None else value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise DatasetImportError(
                f"--reference-time {value!r}: expected ISO-8601, e.g. {DEFAULT_REFERENCE_TIME}"
            ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AsosAdapter(DatasetAdapter):
    """ASOS DSF 2020 train/valid pairs -> interactions/holdout at a fixed reference time."""

    name = "asos"
    description = "ASOS DSF 2020 (train/valid pairs, user and product id lists)"
    options = frozenset({"path", "reference_time"})

    def write(self, writer: TableWriter, **options: Any) -> None:
        folder = require_dir(options.get("path"), self.name, (TRAIN, VALID, USERS, PRODUCTS))
        files = {
            name: require_file(folder / name, f"ASOS file {name}")
            for name in (TRAIN, VALID, USERS, PRODUCTS)
        }
        reference = parse_reference_time(options.get("reference_time"))
        holdout_time = reference + timedelta(days=1)

        for table, name, stamp in (
            ("interactions", TRAIN, reference),
            ("holdout", VALID, holdout_time),
        ):
            self._write_pairs(writer, table, files[name], stamp)

        for table, key, name in (("items", "item_id", PRODUCTS), ("users", "user_id", USERS)):
            # A headerless one-id-per-line file, read as text (no sniffing that could drop zeros)
            ids = (
                f"read_csv({sql_str(files[name])}, header=false, auto_detect=false, "
                f"columns={{{sql_str(key)}: 'VARCHAR'}}) WHERE {key} IS NOT NULL"
            )
            query = f"SELECT {canonical_select(table, {key: key})} FROM {ids}"
            writer.write(table, query, source=files[name])
        writer.note(
            f"no timestamps in the source: all {writer.counts['interactions']:,} train pairs "
            f"are stamped {reference:%Y-%m-%dT%H:%M:%SZ} (no order is known: time-windowed "
            "features such as 7/30-day counts degrade to totals)"
        )
        writer.note(
            f"holdout = {VALID} exactly ({writer.counts['holdout']:,} pairs) at "
            f"{holdout_time:%Y-%m-%dT%H:%M:%SZ}; event_type 'purchase', value 1, no prices"
        )
        self._audit(writer)

    @staticmethod
    def _write_pairs(writer: TableWriter, table: str, path: Path, stamp: datetime) -> None:
        types = writer.columns(parquet(path), path)
        for column in (USER_COLUMN, ITEM_COLUMN):
            if column not in types:
                raise DatasetImportError(
                    f"{path}: column '{column}' not found (the file has: {', '.join(types)}); "
                    "this is not the ASOS DSF layout: use the 'generic' format with --map"
                )
        exprs = {
            "user_id": as_varchar(ident(USER_COLUMN), types[USER_COLUMN]),
            "item_id": as_varchar(ident(ITEM_COLUMN), types[ITEM_COLUMN]),
            "timestamp": f"{sql_str(stamp.isoformat())}::TIMESTAMPTZ",
            "event_type": "'purchase'",
            "value": "1.0",
        }
        query = f"SELECT {canonical_select(table, exprs)} FROM {parquet(path)}"
        writer.write(table, query, source=path)

    @staticmethod
    def _audit(writer: TableWriter) -> None:
        """Count what validation would quarantine, so nothing disappears unexplained."""
        paths = {t: writer.output(t) for t in writer.counts}
        for table in ("interactions", "holdout"):
            dups = writer.scalar(
                f"SELECT count(*) - count(DISTINCT (user_id, item_id)) FROM {paths[table]}"
            )
            if dups:
                writer.note(
                    f"{table}: {dups:,} duplicate (user, item) pairs kept as given; validation "
                    "quarantines repeats as duplicate_event"
                )
            for key, ref in (("item_id", "items"), ("user_id", "users")):
                dangling = writer.scalar(
                    f"SELECT count(*) FROM {paths[table]} WHERE {key} NOT IN "
                    f"(SELECT {key} FROM {paths[ref]})"
                )
                if dangling:
                    writer.note(
                        f"{table}: {dangling:,} rows reference a {key} missing from the {ref} "
                        f"list; validation quarantines them as unknown_{key}"
                    )
        overlap = writer.scalar(
            f"SELECT count(*) FROM (SELECT user_id, item_id FROM {paths['holdout']} "
            f"INTERSECT SELECT user_id, item_id FROM {paths['interactions']})"
        )
        if overlap:
            writer.note(f"holdout: {overlap:,} pairs were also bought in train")
