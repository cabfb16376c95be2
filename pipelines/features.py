"""User and item features as daily snapshots, computed with DuckDB SQL.

Each row holds what was known about an entity at the end of a day, stamped with
``event_timestamp`` = the next midnight: a feature computed from day *d* only becomes available
once day *d* is over. Feast's point-in-time join then hands a training example at time *t*
the newest snapshot stamped at or before *t*, so no example sees its own or later events.

User snapshots are written on the days a user was active and on the days one of their activity
days leaves a 7-, 30- or 90-day window, so windowed counts are exact at every snapshot while the
table stays a few times the number of active user-days (not users x days). Item snapshots are
dense (every day from first sighting), so an item's momentum falls to zero when it stops selling.

Every query computes each user's (or item's) rows from that entity's rows alone, so the same
queries also run over entity shards, as Ray tasks across a cluster (``RECSYS_FEATURES__ENGINE=
ray``, :func:`_run_sharded`, ``pipelines.features_ray``), and write the same files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol

import duckdb

from recsys.core.schema import (
    AGE_BUCKETS,
    EXTRA_PREFIX,
    ITEM_ATTRIBUTES,
    ITEM_CATEGORICAL,
    ITEM_FEATURES,
    ITEMS,
    RECENT_ACTIVITY,
    USER_ACTIVITY,
    USER_FEATURES,
    WINDOWS,
    table_path,
)
from recsys.core.sql import connect_duckdb, ident, parquet, sql_str
from recsys.core.terminal import track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSummary:
    user_rows: int
    item_rows: int
    attribute_rows: int
    activity_rows: int
    out_dir: Path
    mode: str = "full"  # "full", "incremental" (new days only) or "current" (nothing new)
    since: date | None = None  # last day computed before this run, for incremental runs
    engine: str = "duckdb"  # "duckdb" (one process), or the runner of entity shards ("ray")
    shards: int = 0  # entity shards of a Ray run
    nodes: int = 1  # distinct nodes the shards ran on


FULL_RUN = date(1900, 1, 1)  # "since" of a run with no earlier snapshots
# Daily user measures (summed into ``<m>_total``), the windowed ones, and the taste attributes.
MEASURES = ("views", "purchases", "carts", "sessions", "spend")
USER_WINDOWS = (("views", 7), ("views", 30), ("views", 90), ("purchases", 7), ("purchases", 30),
                ("purchases", 90), ("carts", 30))  # fmt: skip
TASTES = ("category", "colour", "department")
BASE_USER = """SELECT NULL::VARCHAR AS user_id, NULL::TIMESTAMPTZ AS event_timestamp,
    NULL::BIGINT AS views_total, NULL::BIGINT AS purchases_total, NULL::BIGINT AS carts_total,
    NULL::BIGINT AS sessions_total, NULL::DOUBLE AS spend_total, NULL::DOUBLE AS max_price_paid,
    NULL::BIGINT AS days_since_last_purchase, NULL::VARCHAR[] AS purchased_items LIMIT 0"""
BASE_ITEM = """SELECT NULL::VARCHAR AS item_id, NULL::TIMESTAMPTZ AS event_timestamp,
    NULL::BIGINT AS item_purchases_total, NULL::BIGINT AS item_buyers_total,
    NULL::DOUBLE AS item_repurchase_rate, NULL::DOUBLE AS item_mean_price_paid LIMIT 0"""


def _latest(source: str, key: str) -> str:
    """Each entity's newest snapshot in ``source`` (the state an incremental run continues)."""
    return (
        f"SELECT * FROM ({source}) QUALIFY row_number() OVER "
        f"(PARTITION BY {key} ORDER BY event_timestamp DESC) = 1"
    )


def _user_sql(
    inter: Path, attributes: Path, users: Path | None, cap: int, since: date, base: str,
    signal: str, last_day: date,
) -> str:  # fmt: skip
    """User snapshots for the days after ``since``, continuing from ``base`` (SQL relation).

    The history (``purchased_items``, newest first) holds the items of the ``signal`` event
    type: purchases in a shop with orders, views in a click-only one (``EventSettings``).

    A full run is the same query with ``since`` = :data:`FULL_RUN` and an empty base, so the
    incremental path is the only path. Only events of the last 90 days before ``since`` are
    re-read (the longest window); totals and the purchase history continue from the base.
    ``attributes`` is the normalised ``item_attributes`` table. ``last_day`` is the data's last
    day over every user, given rather than read from ``inter``: window exits are snapshotted up
    to it, and a shard of the users (the Ray engine) must stop at the same day as the whole.
    """
    age_join = (
        f"LEFT JOIN (SELECT user_id, age FROM {parquet(users)}) u ON u.user_id = c.user_id"
        if users is not None
        else "LEFT JOIN (SELECT NULL::VARCHAR AS user_id, NULL::INTEGER AS age) u ON false"
    )
    since_sql = f"DATE '{since.isoformat()}'"
    boundaries = " UNION ALL ".join(
        f"SELECT user_id, CAST(day + INTERVAL {w} DAY AS DATE) AS day FROM daily" for w in WINDOWS
    )
    windowed = ",\n".join(
        f"sum({m}) OVER (PARTITION BY user_id ORDER BY day "
        f"RANGE BETWEEN INTERVAL {w - 1} DAY PRECEDING AND CURRENT ROW) AS {m}_{w}d"
        for m, w in USER_WINDOWS
    )
    windowed_out = ", ".join(f"CAST(c.{m}_{w}d AS BIGINT) AS {m}_{w}d" for m, w in USER_WINDOWS)
    new_sums = ",\n".join(
        f"sum(CASE WHEN day > {since_sql} THEN {m} ELSE 0 END) OVER w AS {m}_new" for m in MEASURES
    )
    totals = ",\n".join(
        f"CAST(coalesce(b.{m}_total, 0) + c.{m}_new AS {'DOUBLE' if m == 'spend' else 'BIGINT'})"
        f" AS {m}_total"
        for m in MEASURES
    )
    favourites = ",\n".join(
        f"""list_aggregate(h.{a}s, 'mode') AS fav_{a},
           CAST(CASE WHEN len(h.{a}s) = 0 THEN 0 ELSE
                len(list_filter(h.{a}s, lambda x: x = list_aggregate(h.{a}s, 'mode'))) / len(h.{a}s)
                END AS DOUBLE) AS fav_{a}_share"""
        for a in TASTES
    )
    attr_lists = ",\n".join(
        f"list(coalesce(CAST(a.{c} AS VARCHAR), 'unknown') ORDER BY {{order}}) AS {c}s"
        for c in TASTES
    )
    age_buckets = " ".join(
        f"WHEN coalesce(u.age, 0) >= {lo} THEN '{name}'"
        for lo, name in reversed(AGE_BUCKETS)
        if lo > 0
    )
    # The purchase history and its attributes, item by item: concatenated and capped together.
    lists = ("history", *(f"{a}s" for a in TASTES))
    flattened = ", ".join(f"flatten(list({c}) OVER h) AS {c}" for c in lists)
    capped = ",\n".join(
        f"list_concat(coalesce(n.{c}, []), coalesce(bh.{c}, []))[1:{cap}] AS {c}" for c in lists
    )
    return f"""
    WITH ev AS (
        SELECT e.user_id, e.item_id, CAST(e."timestamp" AS TIMESTAMPTZ) AS ts, e.event_type,
               e.price, e.session_id, CAST(e."timestamp" AS DATE) AS day
        FROM {parquet(inter)} e
        WHERE CAST(e."timestamp" AS DATE) > {since_sql} - INTERVAL 90 DAY
    ),
    daily AS (
        SELECT user_id, day,
               count(*) FILTER (WHERE event_type = 'view') AS views,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               count(*) FILTER (WHERE event_type = 'add_to_cart') AS carts,
               coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
               max(price) FILTER (WHERE event_type = 'purchase') AS max_price,
               count(DISTINCT session_id) AS sessions,
               max(day) FILTER (WHERE event_type = 'purchase') AS purchase_day
        FROM ev GROUP BY user_id, day
    ),
    last_day AS (SELECT DATE '{last_day.isoformat()}' AS hi),
    snapshot_days AS (  -- new active days, and the days an active day leaves a window
        SELECT DISTINCT user_id, day FROM (
            SELECT user_id, day FROM daily UNION ALL {boundaries}
        ) WHERE day > {since_sql} AND day <= (SELECT hi FROM last_day)
    ),
    rows AS (  -- the look-back days feed the windows; snapshot days are the output
        SELECT coalesce(d.user_id, s.user_id) AS user_id, coalesce(d.day, s.day) AS day,
               {", ".join(f"coalesce(d.{m}, 0) AS {m}" for m in MEASURES)},
               d.max_price, d.purchase_day,
               s.day IS NOT NULL AS is_snapshot
        FROM daily d FULL OUTER JOIN snapshot_days s ON d.user_id = s.user_id AND d.day = s.day
    ),
    cum AS (
        SELECT user_id, day, is_snapshot,
               {new_sums},
               max(CASE WHEN day > {since_sql} THEN max_price END) OVER w AS max_price_new,
               max(CASE WHEN day > {since_sql} THEN purchase_day END) OVER w AS purchase_day_new,
               {windowed}
        FROM rows
        WINDOW w AS (PARTITION BY user_id ORDER BY day ROWS UNBOUNDED PRECEDING)
    ),
    base AS ({_latest(base, "user_id")}),
    base_hist AS (  -- the base's history with the attributes of each item, in order
        SELECT h.user_id, list(h.item_id ORDER BY h.pos) AS history,
               {attr_lists.format(order="h.pos")}
        FROM (SELECT user_id, unnest(purchased_items) AS item_id,
                     generate_subscripts(purchased_items, 1) AS pos FROM base) h
        LEFT JOIN {parquet(attributes)} a USING (item_id)
        GROUP BY h.user_id
    ),
    bought AS (  -- per new purchase day, newest first: item ids and their attributes
        SELECT b.user_id, b.day, list(b.item_id ORDER BY b.ts DESC) AS history,
               {attr_lists.format(order="b.ts DESC")}
        FROM ev b LEFT JOIN {parquet(attributes)} a USING (item_id)
        WHERE b.event_type = {sql_str(signal)} AND b.day > {since_sql}
        GROUP BY b.user_id, b.day
    ),
    hist_new AS (  -- everything bought since ``since`` up to each purchase day, newest first
        SELECT user_id, day, {flattened}
        FROM bought
        WINDOW h AS (PARTITION BY user_id ORDER BY day DESC
                     ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)
    ),
    hist AS (
        SELECT c.user_id, c.day, {capped}
        FROM (SELECT user_id, day FROM cum WHERE is_snapshot) c
        ASOF LEFT JOIN hist_new n ON c.user_id = n.user_id AND c.day >= n.day
        LEFT JOIN base_hist bh ON bh.user_id = c.user_id
    )
    SELECT c.user_id,
           CAST(c.day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
           {totals},
           CAST(CASE WHEN coalesce(b.purchases_total, 0) + c.purchases_new > 0
                THEN (coalesce(b.spend_total, 0) + c.spend_new)
                     / (coalesce(b.purchases_total, 0) + c.purchases_new)
                ELSE 0 END AS DOUBLE) AS mean_price_paid,
           CAST(coalesce(greatest(b.max_price_paid, c.max_price_new), 0) AS DOUBLE)
               AS max_price_paid,
           {windowed_out},
           CAST(coalesce(date_diff('day', coalesce(c.purchase_day_new,
                    CASE WHEN b.days_since_last_purchase >= 0 THEN
                         CAST(b.event_timestamp AS DATE) - INTERVAL 1 DAY
                         - to_days(CAST(b.days_since_last_purchase AS INTEGER)) END), c.day),
                -1) AS BIGINT) AS days_since_last_purchase,
           CAST(coalesce(u.age, 0) AS BIGINT) AS age,
           CASE {age_buckets} ELSE 'unknown' END AS age_bucket,
           {favourites},
           h.history AS purchased_items
    FROM cum c
    JOIN hist h ON h.user_id = c.user_id AND h.day = c.day
    LEFT JOIN base b ON b.user_id = c.user_id
    {age_join}
    WHERE c.is_snapshot
    ORDER BY c.user_id, event_timestamp
    """


def _item_sql(inter: Path, since: date, base: str, last_day: date) -> str:
    """Dense daily item snapshots for the days after ``since``, continuing from ``base``.

    Items are snapshotted every day from their first sighting to the data's last day
    (``last_day``, over every item: given, so that a shard of the items fills the same days);
    only the last 30 days before ``since`` (the longest window) are re-read besides purchases,
    whose whole history decides who is a new or a repeat buyer.
    """
    since_sql = f"DATE '{since.isoformat()}'"
    return f"""
    WITH all_ev AS (
        SELECT user_id, item_id, event_type, price, CAST("timestamp" AS DATE) AS day
        FROM {parquet(inter)}
    ),
    ev AS (SELECT * FROM all_ev WHERE day > {since_sql} - INTERVAL 30 DAY),
    last_day AS (SELECT DATE '{last_day.isoformat()}' AS hi),
    grid AS (
        SELECT f.item_id, CAST(unnest(generate_series(
                   greatest(f.first_day, CAST({since_sql} - INTERVAL 29 DAY AS DATE)),
                   l.hi, INTERVAL 1 DAY)) AS DATE) AS day
        FROM (SELECT item_id, min(day) AS first_day FROM all_ev GROUP BY item_id) f, last_day l
    ),
    daily AS (
        SELECT item_id, day,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               count(*) FILTER (WHERE event_type = 'view') AS views,
               coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS spend
        FROM ev GROUP BY item_id, day
    ),
    buys AS (  -- the day each buyer bought the item for the 1st and the 2nd time
        SELECT item_id, user_id, day,
               row_number() OVER (PARTITION BY item_id, user_id ORDER BY day) AS nth
        FROM all_ev WHERE event_type = 'purchase'
    ),
    buyer_days AS (
        SELECT item_id, day, count(*) FILTER (WHERE nth = 1) AS new_buyers,
               count(*) FILTER (WHERE nth = 2) AS new_repeaters
        FROM buys WHERE day > {since_sql} GROUP BY item_id, day
    ),
    dense AS (
        SELECT g.item_id, g.day, coalesce(d.purchases, 0) AS purchases,
               coalesce(d.views, 0) AS views, coalesce(d.spend, 0) AS spend,
               coalesce(b.new_buyers, 0) AS new_buyers,
               coalesce(b.new_repeaters, 0) AS new_repeaters
        FROM grid g
        LEFT JOIN daily d ON d.item_id = g.item_id AND d.day = g.day
        LEFT JOIN buyer_days b ON b.item_id = g.item_id AND b.day = g.day
    ),
    win AS (
        SELECT item_id, day,
               sum(CASE WHEN day > {since_sql} THEN purchases ELSE 0 END) OVER w
                   AS purchases_new,
               sum(CASE WHEN day > {since_sql} THEN spend ELSE 0 END) OVER w AS spend_new,
               sum(purchases) OVER w7 AS purchases_7d,
               sum(purchases) OVER w30 AS purchases_30d,
               sum(views) OVER w7 AS views_7d,
               sum(new_buyers) OVER w AS buyers_new,
               sum(new_repeaters) OVER w AS repeaters_new
        FROM dense
        WINDOW w AS (PARTITION BY item_id ORDER BY day ROWS UNBOUNDED PRECEDING),
               w7 AS (PARTITION BY item_id ORDER BY day ROWS 6 PRECEDING),
               w30 AS (PARTITION BY item_id ORDER BY day ROWS 29 PRECEDING)
    ),
    base AS ({_latest(base, "item_id")}),
    totals AS (
        SELECT w.*,
               coalesce(b.item_purchases_total, 0) + w.purchases_new AS purchases_total,
               coalesce(b.item_mean_price_paid * b.item_purchases_total, 0) + w.spend_new
                   AS spend_total,
               coalesce(b.item_buyers_total, 0) + w.buyers_new AS buyers_total,
               round(coalesce(b.item_repurchase_rate * b.item_buyers_total, 0))
                   + w.repeaters_new AS repeaters_total
        FROM win w LEFT JOIN base b USING (item_id)
        WHERE w.day > {since_sql}
    )
    SELECT item_id,
           CAST(day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
           CAST(purchases_total AS BIGINT) AS item_purchases_total,
           CAST(purchases_7d AS BIGINT) AS item_purchases_7d,
           CAST(purchases_30d AS BIGINT) AS item_purchases_30d,
           CAST(views_7d AS BIGINT) AS item_views_7d,
           CAST(buyers_total AS BIGINT) AS item_buyers_total,
           -- this week against the 30-day weekly rate: > 1 rising, < 1 fading
           CAST((purchases_7d + 1.0) / (purchases_30d * 7.0 / 30.0 + 1.0) AS DOUBLE) AS item_trend,
           CAST(CASE WHEN buyers_total > 0 THEN repeaters_total / buyers_total ELSE 0 END
                AS DOUBLE) AS item_repurchase_rate,
           CAST(CASE WHEN purchases_total > 0 THEN spend_total / purchases_total ELSE 0 END
                AS DOUBLE) AS item_mean_price_paid
    FROM totals
    ORDER BY item_id, event_timestamp
    """


def _activity_sql(inter: Path, signal: str) -> str:
    """Each user's latest activity: the batch side of the ``user_activity`` push source
    (``recent_purchases``: the newest items of the ``signal`` event type).

    The API pushes the same columns on every event, so that the recommendation that follows
    already knows what was just viewed or bought; this table seeds it from the logs.
    """
    return f"""
    WITH ev AS (
        SELECT user_id, item_id, CAST("timestamp" AS TIMESTAMPTZ) AS ts, event_type, session_id
        FROM {parquet(inter)}
    ),
    last_session AS (
        SELECT user_id, arg_max(session_id, ts) AS session_id FROM ev GROUP BY user_id
    )
    SELECT e.user_id,
           max(e.ts) AS event_timestamp,
           list(e.item_id ORDER BY e.ts DESC) FILTER (WHERE e.event_type = 'view')
               [1:{RECENT_ACTIVITY}] AS recent_views,
           list(e.item_id ORDER BY e.ts DESC) FILTER (WHERE e.event_type = {sql_str(signal)})
               [1:{RECENT_ACTIVITY}] AS recent_purchases,
           CAST(count(*) FILTER (WHERE e.session_id = l.session_id) AS BIGINT)
               AS session_events,
           CAST(0 AS BIGINT) AS applied_seq  -- no API event folded in yet (serving/events.py)
    FROM ev e JOIN last_session l USING (user_id)
    GROUP BY e.user_id
    ORDER BY e.user_id
    """


def extra_item_columns(columns: set[str] | list[str]) -> list[str]:
    """Catalogue columns the canonical items schema does not know: they pass through."""
    return sorted(c for c in columns if c not in ITEMS.names and not c.startswith("__"))


def _attributes_sql(items: Path, inter: Path, columns: set[str]) -> str:
    """Catalogue attributes; stamped at launch (or first sighting) so they join for any event.

    Extra catalogue columns pass through as ``attr_<name>`` strings (prefixed so they never
    collide with another view's feature names in a feature service).
    """
    cats = ", ".join(
        f"coalesce(CAST(i.{c} AS VARCHAR), 'unknown') AS {c}"
        if c in columns
        else f"'unknown' AS {c}"
        for c in ITEM_CATEGORICAL
    )
    price = "CAST(coalesce(i.price, 0) AS DOUBLE)" if "price" in columns else "CAST(0 AS DOUBLE)"
    stock = "coalesce(i.in_stock, true)" if "in_stock" in columns else "true"
    launch = (
        "CAST(i.launch_date AS TIMESTAMPTZ)" if "launch_date" in columns else "NULL::TIMESTAMPTZ"
    )
    extras = "".join(  # a retailer's column names are data: quoted, never spliced in as SQL
        f", CAST(i.{ident(c)} AS VARCHAR) AS {ident(EXTRA_PREFIX + c)}"
        for c in extra_item_columns(columns)
    )
    return f"""
    WITH first_seen AS (
        SELECT item_id, CAST(min("timestamp") AS TIMESTAMPTZ) AS ts
        FROM {parquet(inter)} GROUP BY item_id
    )
    SELECT i.item_id,
           CAST(least(coalesce({launch}, f.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                      coalesce(f.ts, TIMESTAMPTZ '2100-01-01 00:00:00+00')) AS TIMESTAMPTZ)
                AS event_timestamp,
           {cats}, {price} AS price, {stock} AS in_stock{extras}
    FROM {parquet(items)} i LEFT JOIN first_seen f USING (item_id)
    ORDER BY i.item_id
    """


STATE_FILE = "_state.json"
STATE_VERSION = 2  # bump when a feature definition changes: forces a full recompute


# The columns features are computed from: a change elsewhere does not invalidate snapshots.
FINGERPRINT_COLUMNS = {
    "interactions": ("user_id", "item_id", "timestamp", "event_type", "price", "session_id"),
    "items": ("item_id", *ITEM_CATEGORICAL, "price", "in_stock", "launch_date"),
    "users": ("user_id", "age"),
}


def _columns(con: duckdb.DuckDBPyConnection, path: Path) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {parquet(path)}").fetchall()}


def _fingerprint(
    con: duckdb.DuckDBPyConnection, table: str, path: Path, until: date | None = None
) -> str:
    """Row count and an order-independent hash of a table (interactions: up to ``until``)."""
    present = _columns(con, path)
    columns = [c for c in FINGERPRINT_COLUMNS[table] if c in present]
    where = f"""WHERE CAST("timestamp" AS DATE) <= DATE '{until.isoformat()}'""" if until else ""
    quoted = ", ".join(ident(c) for c in columns)
    query = f"SELECT count(*), sum(hash({quoted})) FROM {parquet(path)} {where}"
    count, digest = con.execute(query).fetchone()
    return f"{count}:{digest}"


def _plan(
    con: duckdb.DuckDBPyConnection, state: dict, inputs: dict[str, Path], cap: int, out_dir: Path,
    signal: str,
) -> tuple[str, date | None]:  # fmt: skip
    """("full" | "incremental" | "current", since): what the last run's state allows."""
    outputs_exist = all((out_dir / f"{n}.parquet").exists() for n in (USER_FEATURES, ITEM_FEATURES))
    same = (state.get("version"), state.get("cap"), state.get("signal", "purchase"))
    if not outputs_exist or same != (STATE_VERSION, cap, signal):
        return "full", None
    since = date.fromisoformat(state["last_day"])
    for name, until in (("items", None), ("users", None), ("interactions", since)):
        now = _fingerprint(con, name, inputs[name], until) if inputs[name].exists() else None
        if now != state["fingerprints"].get(name):
            upto = f" up to {until}" if until else ""
            log.info("%s%s changed since the last run: recomputing every day", name, upto)
            return "full", None
    return "incremental", since


@dataclass(frozen=True)
class Inputs:
    """What the feature queries read: the validated tables and the previous snapshots that an
    incremental run continues from (SQL relations; empty ones on a full run). The whole data,
    or one entity shard of it (:func:`_run_sharded`)."""

    inter: Path
    items: Path
    users: Path | None
    user_base: str = BASE_USER
    item_base: str = BASE_ITEM


@dataclass(frozen=True)
class RunParams:
    """What every query of one run shares, whatever part of the entities it reads."""

    columns: frozenset[str]  # the catalogue's columns (a shard reads the same schema)
    cap: int
    since: date
    last_day: date  # the data's last day, over every entity
    signal: str


def _queries(names: list[str], tables: Inputs, attributes: Path, p: RunParams) -> dict[str, str]:
    """The SQL of each table of ``names`` over ``tables``: the one definition of every feature,
    whether one DuckDB runs it over all the data or a Ray task over one shard of it."""
    t = tables
    build = {
        ITEM_ATTRIBUTES: lambda: _attributes_sql(t.items, t.inter, set(p.columns)),
        USER_ACTIVITY: lambda: _activity_sql(t.inter, p.signal),
        USER_FEATURES: lambda: _user_sql(
            t.inter, attributes, t.users, p.cap, p.since, t.user_base, p.signal, p.last_day
        ),
        ITEM_FEATURES: lambda: _item_sql(t.inter, p.since, t.item_base, p.last_day),
    }
    return {name: build[name]() for name in names}


def _write(con: duckdb.DuckDBPyConnection, name: str, sql: str, out_dir: Path, mode: str) -> None:
    """Write table ``name`` from ``sql`` (appended to the old snapshots on an incremental run)
    through a temporary file, so a failed run leaves the previous file in place."""
    target = out_dir / f"{name}.parquet"
    tmp = target.with_suffix(".parquet.tmp")
    if mode == "incremental" and name in (USER_FEATURES, ITEM_FEATURES):
        sql = f"SELECT * FROM {parquet(target)} UNION ALL BY NAME ({sql})"
    con.execute(f"COPY ({sql}) TO {sql_str(tmp)} (FORMAT PARQUET, COMPRESSION ZSTD)")
    tmp.replace(target)


# --- the same queries over entity shards (the Ray engine) ----------------------------------
#: Which tables are computed per item and which per user. Every query partitions by its entity
#: (window functions and groups by ``item_id`` / ``user_id``) and reads no other entity's rows,
#: so a shard holding all the rows of some entities computes exactly their rows of the whole
#: result. The few inputs that span entities are handled apart: the data's last day is given to
#: every shard (``RunParams.last_day``), and the user queries read the catalogue attributes
#: (one row per item, from the item shards, written first) whole.
ENTITY_TABLES = {
    "item_id": (ITEM_ATTRIBUTES, ITEM_FEATURES),
    "user_id": (USER_ACTIVITY, USER_FEATURES),
}
#: Each table's row order as its query writes it (``ORDER BY``): the parts of the shards are
#: gathered in this order, so both engines write the same files and later stages read rows in
#: the same order.
ORDER = {
    ITEM_ATTRIBUTES: "item_id",
    USER_ACTIVITY: "user_id",
    USER_FEATURES: "user_id, event_timestamp",
    ITEM_FEATURES: "item_id, event_timestamp",
}


@dataclass(frozen=True)
class ShardJob:
    """One shard's share of a run: each table's query over the shard's inputs, copied to a part
    file, in one DuckDB process (a Ray task). Plain data, so that it pickles to any node."""

    label: str
    parts: tuple[tuple[str, str, str], ...]  # (table, SQL, part file)
    memory_limit: str
    threads: int = 1


@dataclass(frozen=True)
class ShardResult:
    rows: dict[str, int]  # rows written per table
    node: str  # where the job ran (a Ray node id; "local" in this process)


def run_shard(job: ShardJob) -> dict[str, int]:
    """Run one :class:`ShardJob`; the rows written per table. Spills go to a folder of this
    node's own, not to the shared data root, and are removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="recsys-features-") as tmp:
        con = connect_duckdb(job.memory_limit, Path(tmp), job.threads)
        try:
            return {
                name: con.execute(
                    f"COPY ({sql}) TO {sql_str(part)} (FORMAT PARQUET, COMPRESSION ZSTD)"
                ).fetchone()[0]
                for name, sql, part in job.parts
            }
        finally:
            con.close()


class ShardRunner(Protocol):
    """Runs the shard jobs of a run: Ray tasks across a cluster
    (``pipelines.features_ray.RayShards``), or one after another here (:class:`InProcessShards`).
    """

    engine: str  # what the run summary names it
    shards: int  # shards per entity
    scratch: Path  # the shards' inputs and parts go under it: a folder every node shares

    def run(self, jobs: list[ShardJob], what: str) -> list[ShardResult]: ...


@dataclass
class InProcessShards:
    """The shard jobs one after another in this process: the sharded path without a cluster,
    which the tests compare with the one-query path."""

    shards: int
    scratch: Path
    engine: str = "in-process shards"

    def run(self, jobs: list[ShardJob], what: str) -> list[ShardResult]:
        return [ShardResult(run_shard(job), "local") for job in track(jobs, what, unit="shards")]


def _partition(
    con: duckdb.DuckDBPyConnection, source: Path, key: str, shards: int, folder: Path
) -> list[Path]:
    """Split ``source`` by the hash of ``key`` into ``shards`` folders in one pass; a glob of
    each shard's files. Every shard gets a file, an empty one with the schema when no row
    hashes to it, so that every shard's queries run (and write their part) alike.

    The key is hashed as text: the catalogue's ``item_id`` may be typed otherwise than the
    events' (the queries join them with a cast), and both must land in the same shard."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    shard = f"hash(CAST({ident(key)} AS VARCHAR)) % {shards}"
    con.execute(
        f"COPY (SELECT *, {shard} AS __shard FROM {parquet(source)}) "
        f"TO {sql_str(folder)} (FORMAT PARQUET, COMPRESSION ZSTD, PARTITION_BY (__shard))"
    )
    globs = []
    for k in range(shards):
        part, hive = folder / str(k), folder / f"__shard={k}"
        if hive.exists():
            hive.rename(part)  # read back from a key=value folder, DuckDB would add a column
        else:
            part.mkdir(parents=True)
            empty = f"SELECT * FROM {parquet(source)} LIMIT 0"
            con.execute(f"COPY ({empty}) TO {sql_str(part / 'empty.parquet')} (FORMAT PARQUET)")
        globs.append(part / "*.parquet")
    return globs


def _run_sharded(
    con: duckdb.DuckDBPyConnection, runner: ShardRunner, names: list[str], inputs: Inputs,
    p: RunParams, out_dir: Path, mode: str, memory_limit: str,
) -> int:  # fmt: skip
    """Compute ``names`` over entity shards (:data:`ENTITY_TABLES`): this process splits the
    inputs by entity hash under the runner's shared scratch folder, ``runner`` runs the same
    queries over each shard, and this process gathers the parts into the usual files.

    Returns the number of distinct nodes the shards ran on. This process makes one streaming
    pass over each input to split it and one over each result to gather it; the windows, joins
    and groups (the work that grows with the data) run in the shards.
    """
    shards = runner.shards
    work = runner.scratch / f"features-{os.getpid()}-{time.time_ns()}"
    attributes = out_dir / f"{ITEM_ATTRIBUTES}.parquet"
    nodes: set[str] = set()
    try:
        for key, tables in ENTITY_TABLES.items():  # items first: user tastes read attributes
            wanted = [t for t in tables if t in names]
            split_started = time.perf_counter()
            inter = _partition(con, inputs.inter, key, shards, work / key / "interactions")
            items = [inputs.items] * shards  # the user queries do not read the catalogue
            users: list[Path | None] = [None] * shards  # nor the item queries the users
            if key == "item_id":
                items = _partition(con, inputs.items, key, shards, work / key / "items")
            elif inputs.users is not None:
                users = list(_partition(con, inputs.users, key, shards, work / key / "users"))
            snapshots = USER_FEATURES if key == "user_id" else ITEM_FEATURES
            bases: list[str] = [BASE_USER if key == "user_id" else BASE_ITEM] * shards
            if mode == "incremental" and snapshots in wanted:
                previous = _partition(con, out_dir / f"{snapshots}.parquet", key, shards,
                                      work / key / "previous")  # fmt: skip
                bases = [f"SELECT * FROM {parquet(glob)}" for glob in previous]
            log.info("split the inputs by %s into %d shards in %.1fs", key, shards,
                     time.perf_counter() - split_started)  # fmt: skip
            jobs = []
            for k in range(shards):
                shard = Inputs(inter[k], items[k], users[k], bases[k], bases[k])
                queries = _queries(wanted, shard, attributes, p)
                parts = tuple(
                    (t, queries[t], str(work / "parts" / t / f"{k}.parquet")) for t in wanted
                )
                jobs.append(ShardJob(f"{key} shard {k}/{shards}", parts, memory_limit))
            for t in wanted:
                (work / "parts" / t).mkdir(parents=True)
            results = runner.run(jobs, f"feature shards by {key}")
            nodes.update(r.node for r in results)
            for t in wanted:
                files = ", ".join(sql_str(part) for job in jobs for name, _, part in job.parts
                                  if name == t)  # fmt: skip
                _write(con, t, f"SELECT * FROM read_parquet([{files}]) ORDER BY {ORDER[t]}",
                       out_dir, mode)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return len(nodes)


def compute_features(
    validated_dir: Path,
    out_dir: Path,
    purchased_cap: int = 500,
    incremental: bool = True,
    memory_limit: str = "3GB",
    signal: str = "purchase",
    runner: ShardRunner | None = None,
) -> FeatureSummary:
    """Read validated tables, write the feature Parquet files (one per Feast source).

    ``signal``: the event type whose items make the users' histories (``EventSettings``).

    User and item snapshots are computed incrementally: when the interactions up to the last
    computed day (and the catalogue and users) are unchanged, only the new days are computed,
    continuing from each entity's last snapshot, and appended. Anything else recomputes all.

    ``runner`` (the Ray engine: ``pipelines.features_ray.RayShards``) runs the same queries over
    entity shards instead of in this one DuckDB, and writes the same files; planning and
    state (full, incremental or current) are the same either way.
    """
    inputs = {n: table_path(validated_dir, n) for n in ("interactions", "items", "users")}
    inter, items, users = inputs.values()
    for required in (inter, items):
        if not required.exists():
            raise FileNotFoundError(f"{required} is missing: run `recsys validate` first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    con = connect_duckdb(memory_limit, out_dir / ".duckdb_tmp")
    state_path = out_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    mode, since = (
        _plan(con, state, inputs, purchased_cap, out_dir, signal) if incremental else ("full", None)
    )
    last_day = con.execute(
        f"""SELECT max(CAST("timestamp" AS DATE)) FROM {parquet(inter)}"""
    ).fetchone()[0]
    if mode == "incremental" and since is not None and last_day <= since:
        mode = "current"
    attributes = out_dir / f"{ITEM_ATTRIBUTES}.parquet"
    params = RunParams(frozenset(_columns(con, items)), purchased_cap,
                       since if mode != "full" else FULL_RUN, last_day, signal)  # fmt: skip
    # in order: user tastes read the normalised attributes written first
    names = [ITEM_ATTRIBUTES, USER_ACTIVITY]
    if mode != "current":
        names += [USER_FEATURES, ITEM_FEATURES]
    nodes = 1
    if runner is None:

        def previous(name: str, empty: str) -> str:
            path = out_dir / f"{name}.parquet"
            return f"SELECT * FROM {parquet(path)}" if mode != "full" else empty

        bases = previous(USER_FEATURES, BASE_USER), previous(ITEM_FEATURES, BASE_ITEM)
        whole = Inputs(inter, items, users if users.exists() else None, *bases)
        queries = _queries(names, whole, attributes, params)
        for name, sql in track(queries.items(), "feature tables", len(queries), "tables"):
            _write(con, name, sql, out_dir, mode)
    else:
        whole = Inputs(inter, items, users if users.exists() else None)
        nodes = _run_sharded(con, runner, names, whole, params, out_dir, mode, memory_limit)
    counts: dict[str, int] = {}  # in the order of the summary's fields
    for name in (USER_FEATURES, ITEM_FEATURES, ITEM_ATTRIBUTES, USER_ACTIVITY):
        target = out_dir / f"{name}.parquet"
        counts[name] = con.execute(f"SELECT count(*) FROM {parquet(target)}").fetchone()[0]
        log.info("%s: %d rows -> %s", name, counts[name], target)
    # An incremental or current run has just checked the catalogue, the users and (current
    # run) the interactions against the stored fingerprints: reuse them, do not rescan.
    fingerprints = dict(state["fingerprints"]) if mode != "full" else {}
    if mode == "full":
        fingerprints["items"] = _fingerprint(con, "items", items)
        fingerprints["users"] = _fingerprint(con, "users", users) if users.exists() else None
    if mode != "current":
        fingerprints["interactions"] = _fingerprint(con, "interactions", inter, last_day)
    con.close()
    state_path.write_text(json.dumps({"version": STATE_VERSION, "cap": purchased_cap,
                                      "signal": signal, "last_day": last_day.isoformat(),
                                      "fingerprints": fingerprints}, indent=1))  # fmt: skip
    if runner is None:
        return FeatureSummary(*counts.values(), out_dir, mode, since)
    return FeatureSummary(*counts.values(), out_dir, mode, since, runner.engine, runner.shards,
                          nodes)  # fmt: skip
