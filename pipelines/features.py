"""User and item features as daily snapshots, computed with DuckDB SQL.

Each row holds what was known about an entity at the end of a day, stamped with
``event_timestamp`` = the next midnight: a feature computed from day *d* only becomes available
once day *d* is over. Feast's point-in-time join then hands a training example at time *t*
the newest snapshot stamped at or before *t*, so no example sees its own or later events.

User snapshots are written on the days a user was active and on the days one of their activity
days leaves a 7-, 30- or 90-day window, so windowed counts are exact at every snapshot while the
table stays a few times the number of active user-days (not users x days). Item snapshots are
dense (every day from first sighting), so an item's momentum falls to zero when it stops selling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.schema import table_path

log = logging.getLogger(__name__)

USER_FEATURES = "user_features"
USER_ACTIVITY = "user_activity"
ITEM_FEATURES = "item_features"
ITEM_ATTRIBUTES = "item_attributes"
WINDOWS = (7, 30, 90)

# Feature names per view; Feast definitions and the model read these lists.
USER_NUMERIC = (
    "views_total", "purchases_total", "carts_total", "sessions_total", "spend_total",
    "mean_price_paid", "max_price_paid",
    "views_7d", "views_30d", "views_90d", "purchases_7d", "purchases_30d", "purchases_90d",
    "carts_30d", "days_since_last_purchase", "age",
    "fav_category_share", "fav_colour_share", "fav_department_share",
)  # fmt: skip
USER_CATEGORICAL = ("fav_category", "fav_colour", "fav_department", "age_bucket")
ITEM_NUMERIC = (
    "item_purchases_total", "item_purchases_7d", "item_purchases_30d", "item_views_7d",
    "item_buyers_total", "item_trend", "item_repurchase_rate", "item_mean_price_paid",
)  # fmt: skip
ITEM_CATEGORICAL = ("category", "colour", "department", "style", "product_type")
AGE_BUCKETS = ((0, "unknown"), (13, "13-17"), (18, "18-24"), (25, "25-34"), (35, "35-44"),
               (45, "45-54"), (55, "55-64"), (65, "65+"))  # fmt: skip


RECENT_ACTIVITY = 20  # item ids kept per list in the real-time activity view


@dataclass(frozen=True)
class FeatureSummary:
    user_rows: int
    item_rows: int
    attribute_rows: int
    activity_rows: int
    out_dir: Path


def _age_bucket_sql(column: str) -> str:
    cases = " ".join(
        f"WHEN {column} >= {lo} THEN '{name}'" for lo, name in reversed(AGE_BUCKETS) if lo > 0
    )
    return f"CASE {cases} ELSE 'unknown' END"


def _windowed(measure: str, days: int) -> str:
    return (
        f"sum({measure}) OVER (PARTITION BY user_id ORDER BY day "
        f"RANGE BETWEEN INTERVAL {days - 1} DAY PRECEDING AND CURRENT ROW)"
    )


def _user_sql(inter: Path, attributes: Path, users: Path | None, cap: int) -> str:
    """User snapshots; ``attributes`` is the normalised ``item_attributes`` table."""
    age_join = (
        f"LEFT JOIN (SELECT user_id, age FROM read_parquet('{users}')) u ON u.user_id = c.user_id"
        if users is not None
        else "LEFT JOIN (SELECT NULL::VARCHAR AS user_id, NULL::INTEGER AS age) u ON false"
    )
    boundaries = " UNION ALL ".join(
        f"SELECT user_id, day + INTERVAL {w} DAY AS day FROM active" for w in WINDOWS
    )
    windowed = ",\n".join(
        f"{_windowed(m, w)} AS {m}_{w}d"
        for m, w in (("views", 7), ("views", 30), ("views", 90), ("purchases", 7),
                     ("purchases", 30), ("purchases", 90), ("carts", 30))
    )  # fmt: skip
    favourites = ",\n".join(
        f"""list_aggregate(h.{a}s, 'mode') AS fav_{a},
           CAST(CASE WHEN len(h.{a}s) = 0 THEN 0 ELSE
                len(list_filter(h.{a}s, lambda x: x = list_aggregate(h.{a}s, 'mode'))) / len(h.{a}s)
                END AS DOUBLE) AS fav_{a}_share"""
        for a in ("category", "colour", "department")
    )
    return f"""
    WITH ev AS (
        SELECT e.user_id, e.item_id, CAST(e."timestamp" AS TIMESTAMPTZ) AS ts, e.event_type,
               e.price, e.session_id, CAST(e."timestamp" AS DATE) AS day
        FROM read_parquet('{inter}') e
    ),
    daily AS (
        SELECT user_id, day,
               count(*) FILTER (WHERE event_type = 'view') AS views,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               count(*) FILTER (WHERE event_type = 'add_to_cart') AS carts,
               coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
               max(price) FILTER (WHERE event_type = 'purchase') AS max_price,
               count(DISTINCT session_id) AS sessions,
               max(ts) FILTER (WHERE event_type = 'purchase') AS last_purchase_ts
        FROM ev GROUP BY user_id, day
    ),
    active AS (SELECT user_id, day FROM daily),
    last_day AS (SELECT max(day) AS hi FROM daily),
    snapshot_days AS (  -- active days plus the days an active day leaves a window
        SELECT DISTINCT user_id, CAST(day AS DATE) AS day FROM ({boundaries})
        WHERE CAST(day AS DATE) <= (SELECT hi FROM last_day)
        UNION SELECT user_id, day FROM active
    ),
    filled AS (
        SELECT s.user_id, s.day, coalesce(d.views, 0) AS views,
               coalesce(d.purchases, 0) AS purchases, coalesce(d.carts, 0) AS carts,
               coalesce(d.spend, 0) AS spend, d.max_price, coalesce(d.sessions, 0) AS sessions,
               d.last_purchase_ts
        FROM snapshot_days s LEFT JOIN daily d ON d.user_id = s.user_id AND d.day = s.day
    ),
    cum AS (
        SELECT user_id, day,
               sum(views) OVER w AS views_total,
               sum(purchases) OVER w AS purchases_total,
               sum(carts) OVER w AS carts_total,
               sum(sessions) OVER w AS sessions_total,
               sum(spend) OVER w AS spend_total,
               max(max_price) OVER w AS max_price_paid,
               max(last_purchase_ts) OVER w AS last_purchase_ts,
               {windowed}
        FROM filled
        WINDOW w AS (PARTITION BY user_id ORDER BY day ROWS UNBOUNDED PRECEDING)
    ),
    bought AS (  -- per purchase day, newest first: item ids and their attributes
        SELECT b.user_id, b.day,
               list(b.item_id ORDER BY b.ts DESC) AS items_today,
               list(coalesce(CAST(i.category AS VARCHAR), 'unknown') ORDER BY b.ts DESC)
                   AS categorys_today,
               list(coalesce(CAST(i.colour AS VARCHAR), 'unknown') ORDER BY b.ts DESC)
                   AS colours_today,
               list(coalesce(CAST(i.department AS VARCHAR), 'unknown') ORDER BY b.ts DESC)
                   AS departments_today
        FROM ev b LEFT JOIN read_parquet('{attributes}') i USING (item_id)
        WHERE b.event_type = 'purchase' GROUP BY b.user_id, b.day
    ),
    hist AS (  -- everything bought up to each purchase day, newest first, capped
        SELECT user_id, day,
               flatten(list(items_today) OVER h)[1:{cap}] AS history,
               flatten(list(categorys_today) OVER h)[1:{cap}] AS categorys,
               flatten(list(colours_today) OVER h)[1:{cap}] AS colours,
               flatten(list(departments_today) OVER h)[1:{cap}] AS departments
        FROM bought
        WINDOW h AS (PARTITION BY user_id ORDER BY day DESC
                     ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)
    )
    SELECT c.user_id,
           CAST(c.day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
           CAST(c.views_total AS BIGINT) AS views_total,
           CAST(c.purchases_total AS BIGINT) AS purchases_total,
           CAST(c.carts_total AS BIGINT) AS carts_total,
           CAST(c.sessions_total AS BIGINT) AS sessions_total,
           CAST(c.spend_total AS DOUBLE) AS spend_total,
           CAST(CASE WHEN c.purchases_total > 0 THEN c.spend_total / c.purchases_total
                ELSE 0 END AS DOUBLE) AS mean_price_paid,
           CAST(coalesce(c.max_price_paid, 0) AS DOUBLE) AS max_price_paid,
           CAST(c.views_7d AS BIGINT) AS views_7d,
           CAST(c.views_30d AS BIGINT) AS views_30d,
           CAST(c.views_90d AS BIGINT) AS views_90d,
           CAST(c.purchases_7d AS BIGINT) AS purchases_7d,
           CAST(c.purchases_30d AS BIGINT) AS purchases_30d,
           CAST(c.purchases_90d AS BIGINT) AS purchases_90d,
           CAST(c.carts_30d AS BIGINT) AS carts_30d,
           CAST(CASE WHEN c.last_purchase_ts IS NULL THEN -1
                ELSE date_diff('day', CAST(c.last_purchase_ts AS DATE), c.day) END AS BIGINT)
                AS days_since_last_purchase,
           CAST(coalesce(u.age, 0) AS BIGINT) AS age,
           {_age_bucket_sql("coalesce(u.age, 0)")} AS age_bucket,
           {favourites},
           coalesce(h.history, []::VARCHAR[]) AS purchased_items
    FROM cum c
    ASOF LEFT JOIN hist h ON c.user_id = h.user_id AND c.day >= h.day
    {age_join}
    ORDER BY c.user_id, event_timestamp
    """


def _item_sql(inter: Path) -> str:
    """Dense daily item snapshots, from first sighting to the data's last day."""
    return f"""
    WITH ev AS (
        SELECT user_id, item_id, event_type, price, CAST("timestamp" AS DATE) AS day
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
               count(*) FILTER (WHERE event_type = 'view') AS views,
               coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS spend
        FROM ev GROUP BY item_id, day
    ),
    buys AS (  -- the day each buyer bought the item for the 1st and the 2nd time
        SELECT item_id, user_id, day,
               row_number() OVER (PARTITION BY item_id, user_id ORDER BY day) AS nth
        FROM ev WHERE event_type = 'purchase'
    ),
    buyer_days AS (
        SELECT item_id, day, count(*) FILTER (WHERE nth = 1) AS new_buyers,
               count(*) FILTER (WHERE nth = 2) AS new_repeaters
        FROM buys GROUP BY item_id, day
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
               sum(purchases) OVER w AS purchases_total,
               sum(spend) OVER w AS spend_total,
               sum(purchases) OVER w7 AS purchases_7d,
               sum(purchases) OVER w30 AS purchases_30d,
               sum(views) OVER w7 AS views_7d,
               sum(new_buyers) OVER w AS buyers_total,
               sum(new_repeaters) OVER w AS repeaters_total
        FROM dense
        WINDOW w AS (PARTITION BY item_id ORDER BY day ROWS UNBOUNDED PRECEDING),
               w7 AS (PARTITION BY item_id ORDER BY day ROWS 6 PRECEDING),
               w30 AS (PARTITION BY item_id ORDER BY day ROWS 29 PRECEDING)
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
    FROM win
    ORDER BY item_id, event_timestamp
    """


def _activity_sql(inter: Path) -> str:
    """Each user's latest activity: the batch side of the ``user_activity`` push source.

    The API pushes the same columns on every event, so that the recommendation that follows
    already knows what was just viewed or bought; this table seeds it from the logs.
    """
    return f"""
    WITH ev AS (
        SELECT user_id, item_id, CAST("timestamp" AS TIMESTAMPTZ) AS ts, event_type, session_id
        FROM read_parquet('{inter}')
    ),
    last_session AS (
        SELECT user_id, arg_max(session_id, ts) AS session_id FROM ev GROUP BY user_id
    )
    SELECT e.user_id,
           max(e.ts) AS event_timestamp,
           list(e.item_id ORDER BY e.ts DESC) FILTER (WHERE e.event_type = 'view')
               [1:{RECENT_ACTIVITY}] AS recent_views,
           list(e.item_id ORDER BY e.ts DESC) FILTER (WHERE e.event_type = 'purchase')
               [1:{RECENT_ACTIVITY}] AS recent_purchases,
           CAST(count(*) FILTER (WHERE e.session_id = l.session_id) AS BIGINT)
               AS session_events
    FROM ev e JOIN last_session l USING (user_id)
    GROUP BY e.user_id
    ORDER BY e.user_id
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
    """Read validated tables, write the feature Parquet files (one per Feast source)."""
    inter = table_path(validated_dir, "interactions")
    items = table_path(validated_dir, "items")
    users = table_path(validated_dir, "users")
    for required in (inter, items):
        if not required.exists():
            raise FileNotFoundError(f"{required} is missing: run `recsys validate` first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # the CLI prints its own stage timings
    item_columns = {
        r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{items}')").fetchall()
    }
    attributes = out_dir / f"{ITEM_ATTRIBUTES}.parquet"
    queries = {  # in order: user tastes read the normalised attributes written first
        ITEM_ATTRIBUTES: _attributes_sql(items, inter, item_columns),
        USER_FEATURES: _user_sql(
            inter, attributes, users if users.exists() else None, purchased_cap
        ),
        USER_ACTIVITY: _activity_sql(inter),
        ITEM_FEATURES: _item_sql(inter),
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
        counts[USER_FEATURES],
        counts[ITEM_FEATURES],
        counts[ITEM_ATTRIBUTES],
        counts[USER_ACTIVITY],
        out_dir,
    )
