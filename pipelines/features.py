"""User and item features as daily snapshots, computed with DuckDB SQL.

Each row holds what was known about an entity at the end of a day, stamped with
``event_timestamp`` = the next midnight: a feature computed from day *d* only becomes available
once day *d* is over. Feast's point-in-time join then hands a training example at time *t*
the newest snapshot stamped at or before *t*, so no example sees its own or later events.

Snapshots are written on days an entity was active; windowed counts (7/30 days) are exact on
those days and carried forward unchanged until the next active day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.schema import table_path

log = logging.getLogger(__name__)

USER_FEATURES = "user_features"
ITEM_FEATURES = "item_features"
ITEM_ATTRIBUTES = "item_attributes"

# Feature names per view; Feast definitions and the model read these lists.
USER_NUMERIC = (
    "views_total", "purchases_total", "sessions_total", "spend_total", "mean_price_paid",
    "max_price_paid", "purchases_30d", "views_7d", "days_since_last_purchase", "age",
)  # fmt: skip
ITEM_NUMERIC = ("item_purchases_total", "item_purchases_7d", "item_views_7d", "item_buyers_total")
ITEM_CATEGORICAL = ("category", "colour", "department", "style", "product_type")


@dataclass(frozen=True)
class FeatureSummary:
    user_rows: int
    item_rows: int
    attribute_rows: int
    out_dir: Path


def _user_sql(inter: Path, users: Path | None, cap: int) -> str:
    age_join = (
        f"LEFT JOIN (SELECT user_id, age FROM read_parquet('{users}')) u ON u.user_id = c.user_id"
        if users is not None
        else "LEFT JOIN (SELECT NULL::VARCHAR AS user_id, NULL::INTEGER AS age) u ON false"
    )
    return f"""
    WITH ev AS (
        SELECT user_id, item_id, CAST("timestamp" AS TIMESTAMPTZ) AS ts, event_type, price,
               session_id, CAST("timestamp" AS DATE) AS day
        FROM read_parquet('{inter}')
    ),
    daily AS (
        SELECT user_id, day,
               count(*) FILTER (WHERE event_type = 'view') AS views,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
               max(price) FILTER (WHERE event_type = 'purchase') AS max_price,
               count(DISTINCT session_id) AS sessions,
               max(ts) FILTER (WHERE event_type = 'purchase') AS last_purchase_ts
        FROM ev GROUP BY user_id, day
    ),
    cum AS (
        SELECT user_id, day,
               sum(views) OVER w AS views_total,
               sum(purchases) OVER w AS purchases_total,
               sum(sessions) OVER w AS sessions_total,
               sum(spend) OVER w AS spend_total,
               max(max_price) OVER w AS max_price_paid,
               max(last_purchase_ts) OVER w AS last_purchase_ts,
               sum(purchases) OVER (PARTITION BY user_id ORDER BY day
                   RANGE BETWEEN INTERVAL 29 DAY PRECEDING AND CURRENT ROW) AS purchases_30d,
               sum(views) OVER (PARTITION BY user_id ORDER BY day
                   RANGE BETWEEN INTERVAL 6 DAY PRECEDING AND CURRENT ROW) AS views_7d
        FROM daily
        WINDOW w AS (PARTITION BY user_id ORDER BY day ROWS UNBOUNDED PRECEDING)
    ),
    bought AS (  -- newest-first purchase history as of the end of each purchase day
        SELECT user_id, day,
               list_reverse(list(item_id ORDER BY ts)) AS items_today
        FROM ev WHERE event_type = 'purchase' GROUP BY user_id, day
    ),
    hist AS (
        SELECT user_id, day,
               flatten(list(items_today) OVER (PARTITION BY user_id ORDER BY day DESC
                   ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)) AS history
        FROM bought
    )
    SELECT c.user_id,
           CAST(c.day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
           CAST(c.views_total AS BIGINT) AS views_total,
           CAST(c.purchases_total AS BIGINT) AS purchases_total,
           CAST(c.sessions_total AS BIGINT) AS sessions_total,
           CAST(c.spend_total AS DOUBLE) AS spend_total,
           CAST(CASE WHEN c.purchases_total > 0 THEN c.spend_total / c.purchases_total
                ELSE 0 END AS DOUBLE) AS mean_price_paid,
           CAST(coalesce(c.max_price_paid, 0) AS DOUBLE) AS max_price_paid,
           CAST(c.purchases_30d AS BIGINT) AS purchases_30d,
           CAST(c.views_7d AS BIGINT) AS views_7d,
           CAST(CASE WHEN c.last_purchase_ts IS NULL THEN -1
                ELSE date_diff('day', CAST(c.last_purchase_ts AS DATE), c.day) END AS BIGINT)
                AS days_since_last_purchase,
           CAST(coalesce(u.age, 0) AS BIGINT) AS age,
           coalesce(h.history[1:{cap}], []::VARCHAR[]) AS purchased_items
    FROM cum c
    ASOF LEFT JOIN hist h ON c.user_id = h.user_id AND c.day >= h.day
    {age_join}
    ORDER BY c.user_id, event_timestamp
    """


def _item_sql(inter: Path) -> str:
    """Dense daily item snapshots (every day from first sighting to the data's last day).

    Dense, unlike the user snapshots, so that a windowed count falls back to zero when an item
    stops selling: the item tower reads these counts as the item's current momentum.
    """
    return f"""
    WITH ev AS (
        SELECT user_id, item_id, event_type, CAST("timestamp" AS DATE) AS day
        FROM read_parquet('{inter}')
    ),
    last_day AS (SELECT max(day) AS hi FROM ev),
    grid AS (
        SELECT f.item_id, CAST(unnest(generate_series(f.first_day, l.hi, INTERVAL 1 DAY)) AS DATE)
               AS day
        FROM (SELECT item_id, min(day) AS first_day FROM ev GROUP BY item_id) f, last_day l
    ),
    daily AS (
        SELECT item_id, day,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               count(*) FILTER (WHERE event_type = 'view') AS views
        FROM ev GROUP BY item_id, day
    ),
    new_buyers AS (
        SELECT item_id, day, count(*) AS buyers
        FROM (SELECT item_id, user_id, min(day) AS day FROM ev
              WHERE event_type = 'purchase' GROUP BY item_id, user_id)
        GROUP BY item_id, day
    ),
    dense AS (
        SELECT g.item_id, g.day, coalesce(d.purchases, 0) AS purchases,
               coalesce(d.views, 0) AS views, coalesce(b.buyers, 0) AS buyers
        FROM grid g
        LEFT JOIN daily d ON d.item_id = g.item_id AND d.day = g.day
        LEFT JOIN new_buyers b ON b.item_id = g.item_id AND b.day = g.day
    )
    SELECT item_id,
           CAST(day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
           CAST(sum(purchases) OVER w AS BIGINT) AS item_purchases_total,
           CAST(sum(purchases) OVER w7 AS BIGINT) AS item_purchases_7d,
           CAST(sum(views) OVER w7 AS BIGINT) AS item_views_7d,
           CAST(sum(buyers) OVER w AS BIGINT) AS item_buyers_total
    FROM dense
    WINDOW w AS (PARTITION BY item_id ORDER BY day ROWS UNBOUNDED PRECEDING),
           w7 AS (PARTITION BY item_id ORDER BY day ROWS 6 PRECEDING)
    ORDER BY item_id, event_timestamp
    """


def _attributes_sql(items: Path, inter: Path, columns: set[str]) -> str:
    """Catalogue attributes; stamped at launch (or first sighting) so they join for any event."""
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
    return f"""
    WITH first_seen AS (
        SELECT item_id, CAST(min("timestamp") AS TIMESTAMPTZ) AS ts
        FROM read_parquet('{inter}') GROUP BY item_id
    )
    SELECT i.item_id,
           CAST(least(coalesce({launch}, f.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                      coalesce(f.ts, TIMESTAMPTZ '2100-01-01 00:00:00+00')) AS TIMESTAMPTZ)
                AS event_timestamp,
           {cats}, {price} AS price, {stock} AS in_stock
    FROM read_parquet('{items}') i LEFT JOIN first_seen f USING (item_id)
    ORDER BY i.item_id
    """


def compute_features(
    validated_dir: Path, out_dir: Path, purchased_cap: int = 500
) -> FeatureSummary:
    """Read validated tables, write the three feature Parquet files to ``out_dir``."""
    inter = table_path(validated_dir, "interactions")
    items = table_path(validated_dir, "items")
    users = table_path(validated_dir, "users")
    for required in (inter, items):
        if not required.exists():
            raise FileNotFoundError(f"{required} is missing: run `recsys validate` first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    item_columns = {
        r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{items}')").fetchall()
    }
    queries = {
        USER_FEATURES: _user_sql(inter, users if users.exists() else None, purchased_cap),
        ITEM_FEATURES: _item_sql(inter),
        ITEM_ATTRIBUTES: _attributes_sql(items, inter, item_columns),
    }
    counts: dict[str, int] = {}
    for name, sql in queries.items():
        target = out_dir / f"{name}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        con.execute(f"COPY ({sql}) TO '{tmp}' (FORMAT PARQUET, COMPRESSION ZSTD)")
        tmp.replace(target)
        counts[name] = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
        log.info("%s: %d rows -> %s", name, counts[name], target)
    con.close()
    return FeatureSummary(
        counts[USER_FEATURES], counts[ITEM_FEATURES], counts[ITEM_ATTRIBUTES], out_dir
    )
