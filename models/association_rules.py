"""Association rules: "frequently bought together" from co-purchases, mined in DuckDB SQL.

An embedding model answers "what is *similar* to this item"; a shopper looking at a dress also
wants what *goes with* it (the belt, the shoes), and that is what people bought in the same
basket. Rules are counted exactly rather than learned, so they are explainable ("34% of the
baskets with this dress also had this belt") and need no training run.

For a directed rule ``A -> C`` over ``N`` baskets (a basket's items are distinct):

* ``support = baskets(A and C) / N``: how common the pair is at all;
* ``confidence = baskets(A and C) / baskets(A)``: the estimate of P(C in basket | A in basket),
  the number a "customers also bought" list is ranked by;
* ``lift = confidence / (baskets(C) / N)``: how much more likely C is next to A than anywhere.
  Confidence alone favours best sellers (a plain white T-shirt is "bought with" everything);
  lift > 1 means the pair is more than popularity, lift ~ 1 means it is not.

What a basket is matters more than the thresholds. A *session* is the truest basket (one
shopping trip) where the data has session ids; a *day* (user, UTC date) is the next best thing
and is what retailers' exports such as H&M's give; a *user* pools a whole purchase history,
which finds taste rather than outfits. ``basket="auto"`` takes sessions when the data has any
and days otherwise. The ASOS data set has no timestamps (every purchase carries the same
reference time), so all of a user's purchases share one day there and "day" == "user".

A basket with n items yields n(n-1) directed pairs, so a few giant baskets (resellers, bots,
"user" baskets of heavy buyers) would dominate both the run time and the counts; baskets above
``max_basket_items`` still count towards ``N`` and the per-item counts, but give no pairs.

:class:`BoughtTogether` is the serving side: rules held in flat arrays with one span per
antecedent, so a lookup is a dict hit and a slice (microseconds), and :func:`save_rules` /
:func:`load_rules` store the rules as Parquet (nothing pickled).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.core.run import Run

log = logging.getLogger(__name__)

BasketKind = Literal["auto", "session", "day", "user"]
BASKET_KINDS: tuple[str, ...] = ("auto", "session", "day", "user")

RULES_SCHEMA = pa.schema(
    [
        pa.field("antecedent", pa.string(), nullable=False),
        pa.field("consequent", pa.string(), nullable=False),
        pa.field("pair_baskets", pa.int64(), nullable=False),
        pa.field("support", pa.float64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("lift", pa.float64(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),
    ]
)
RULE_COLUMNS: tuple[str, ...] = tuple(RULES_SCHEMA.names)
RULES = "bought_together"  # its part of a run folder
_ATTRS_KEY = b"recsys.rules.attrs"  # Parquet schema metadata: the frame's attrs as JSON


def _empty_rules() -> pd.DataFrame:
    return RULES_SCHEMA.empty_table().to_pandas()


def _resolve_basket(purchases: pd.DataFrame, basket: str) -> str:
    if basket not in BASKET_KINDS:
        raise ValueError(f"basket must be one of {', '.join(BASKET_KINDS)}, got {basket!r}")
    if basket != "auto":
        return basket
    has_sessions = "session_id" in purchases.columns and bool(purchases["session_id"].notna().any())
    return "session" if has_sessions else "day"


def _basket_key_sql(kind: str, has_session_column: bool) -> tuple[str, str]:
    """SQL for the (s, d) parts of the basket key (user_id is always the first part).

    Sessions are keyed with their user too: ids are only assumed unique per user, and two
    shoppers' purchases must never share a basket. A null part is a constant of the key
    (GROUP BY treats nulls as equal), which is how "user" ignores both parts.
    """
    day = 'CAST("timestamp" AS DATE)'  # UTC date: the connection's TimeZone is set to UTC
    if kind == "session":
        session = "CAST(session_id AS VARCHAR)" if has_session_column else "NULL::VARCHAR"
        return session, f"CASE WHEN {session} IS NULL THEN {day} END"
    if kind == "day":
        return "NULL::VARCHAR", day
    return "NULL::VARCHAR", "NULL::DATE"  # user


def mine_rules(
    purchases: pd.DataFrame,
    *,
    basket: BasketKind = "auto",
    min_pair_baskets: int = 2,
    min_confidence: float = 0.0,
    top_n: int = 20,
    max_basket_items: int = 100,
) -> pd.DataFrame:
    """Directed rules ``antecedent -> consequent`` from purchases, best ``top_n`` per antecedent.

    ``purchases``: ``user_id``, ``item_id``, ``timestamp`` (UTC) and optionally ``session_id``,
    already filtered to purchases. ``basket``: ``"session"`` (rows without a session id fall
    back to user + UTC day), ``"day"`` (user + UTC day), ``"user"``, or ``"auto"`` (session when
    any session id is present, else day).

    Returns columns :data:`RULE_COLUMNS`, sorted by antecedent then rank, keeping rules with
    ``pair_baskets >= min_pair_baskets`` and ``confidence >= min_confidence``. Rank 1 is the
    best rule of its antecedent: confidence desc, lift desc, consequent asc. Within one
    antecedent these equal pair_baskets desc and baskets(consequent) asc, which is how the SQL
    orders them: on exact integers, so that float rounding cannot reorder ties.
    ``frame.attrs`` holds ``{"baskets": N, "basket": resolved kind}``.
    """
    if min_pair_baskets < 1:
        raise ValueError(f"min_pair_baskets must be >= 1, got {min_pair_baskets}")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if max_basket_items < 2:
        raise ValueError(f"max_basket_items must be >= 2, got {max_basket_items}")
    missing = {"user_id", "item_id", "timestamp"} - set(purchases.columns)
    if missing:
        raise ValueError(f"purchases lacks column(s): {', '.join(sorted(missing))}")
    kind = _resolve_basket(purchases, basket)
    has_session_column = "session_id" in purchases.columns
    if kind == "session" and not has_session_column:
        log.warning("basket='session' but purchases has no session_id: every basket is a day")

    if purchases.empty:
        out = _empty_rules()
        out.attrs = {"baskets": 0, "basket": kind}
        return out

    session_sql, day_sql = _basket_key_sql(kind, has_session_column)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("purchases", purchases)
        # One row per basket with its distinct items; the basket number is only a join key.
        con.execute(
            f"""CREATE TEMP TABLE baskets AS
                SELECT row_number() OVER () AS b, list(DISTINCT i) AS items
                FROM (SELECT CAST(user_id AS VARCHAR) AS u, {session_sql} AS s, {day_sql} AS d,
                             CAST(item_id AS VARCHAR) AS i
                      FROM purchases WHERE user_id IS NOT NULL AND item_id IS NOT NULL)
                GROUP BY u, s, d"""
        )
        n_baskets, skipped = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE len(items) > ?) FROM baskets",
            [max_basket_items],
        ).fetchone()
        if skipped:
            log.info(
                "%d of %d baskets have more than %d items: counted, but no pairs taken",
                skipped, n_baskets, max_basket_items,
            )  # fmt: skip
        con.execute(
            """CREATE TEMP TABLE basket_items AS
               SELECT b, len(items) AS n, unnest(items) AS i FROM baskets"""
        )
        # Pairs are counted once (x < y) and mirrored: half the join and aggregation work.
        rules = con.execute(
            """WITH item_baskets AS (SELECT i, count(*) AS cnt FROM basket_items GROUP BY i),
               undirected AS (
                   SELECT x.i AS a, y.i AS c, count(*) AS pair_baskets
                   FROM basket_items x JOIN basket_items y ON x.b = y.b AND x.i < y.i
                   WHERE x.n BETWEEN 2 AND $max_items
                   GROUP BY x.i, y.i HAVING count(*) >= $min_pairs),
               directed AS (
                   SELECT a, c, pair_baskets FROM undirected
                   UNION ALL SELECT c, a, pair_baskets FROM undirected),
               scored AS (
                   SELECT p.a, p.c, p.pair_baskets, cc.cnt AS c_cnt,
                          p.pair_baskets / $n AS support,
                          p.pair_baskets / ca.cnt AS confidence,
                          (p.pair_baskets / ca.cnt) / (cc.cnt / $n) AS lift
                   FROM directed p
                   JOIN item_baskets ca ON ca.i = p.a JOIN item_baskets cc ON cc.i = p.c
                   WHERE p.pair_baskets / ca.cnt >= $min_conf),
               ranked AS (
                   SELECT *, row_number() OVER (
                       PARTITION BY a ORDER BY pair_baskets DESC, c_cnt ASC, c ASC) AS rank
                   FROM scored)
               SELECT a AS antecedent, c AS consequent,
                      CAST(pair_baskets AS BIGINT) AS pair_baskets,
                      CAST(support AS DOUBLE) AS support,
                      CAST(confidence AS DOUBLE) AS confidence,
                      CAST(lift AS DOUBLE) AS lift, CAST(rank AS BIGINT) AS rank
               FROM ranked WHERE rank <= $top_n
               ORDER BY antecedent, rank""",
            {
                "max_items": max_basket_items,
                "min_pairs": min_pair_baskets,
                "n": float(n_baskets),
                "min_conf": float(min_confidence),
                "top_n": top_n,
            },
        ).df()
    if rules.empty:
        rules = _empty_rules()
    rules.attrs = {"baskets": int(n_baskets), "basket": kind}
    log.info(
        "%d rules for %d antecedents from %d %s baskets",
        len(rules), rules["antecedent"].nunique(), n_baskets, kind,
    )  # fmt: skip
    return rules


# --------------------------------------------------------------------------- serving
@dataclass(frozen=True, slots=True)
class Rule:
    """One rule ``antecedent -> consequent`` with the numbers that justify showing it."""

    antecedent: str
    consequent: str
    confidence: float
    lift: float
    support: float
    pair_baskets: int


class BoughtTogether:
    """Rules ready for serving: per antecedent, its consequents in rank order.

    The rules are held column-wise in flat arrays sorted by (antecedent, rank), with a dict from
    antecedent to its ``[start, end)`` span: one dict hit and a slice per lookup, and a few
    bytes per rule (a list of tuples per antecedent costs ~200 bytes per rule, which is 80 MB
    for 20k items x 20 rules). Consequent ids are stored once each and referenced by code.
    """

    __slots__ = ("_spans", "_ids", "_consequent", "_confidence", "_lift", "_support", "_pairs")

    def __init__(
        self,
        spans: dict[str, tuple[int, int]],
        ids: list[str],
        consequent: np.ndarray,
        confidence: np.ndarray,
        lift: np.ndarray,
        support: np.ndarray,
        pair_baskets: np.ndarray,
    ) -> None:
        self._spans = spans
        self._ids = ids  # consequent code -> item id
        self._consequent = consequent  # int32 codes into _ids
        self._confidence = confidence
        self._lift = lift
        self._support = support
        self._pairs = pair_baskets

    @classmethod
    def from_frame(cls, rules: pd.DataFrame) -> BoughtTogether:
        """Build from :func:`mine_rules` output (any row order; rank decides the order)."""
        missing = set(RULE_COLUMNS) - set(rules.columns)
        if missing:
            raise ValueError(f"rules lack column(s): {', '.join(sorted(missing))}")
        df = rules.sort_values(["antecedent", "rank"], kind="stable")
        antecedent = df["antecedent"].astype(str).to_numpy()
        codes, uniques = pd.factorize(df["consequent"].astype(str))
        n = len(df)
        spans: dict[str, tuple[int, int]] = {}
        if n:
            starts = np.flatnonzero(np.r_[True, antecedent[1:] != antecedent[:-1]])
            ends = np.r_[starts[1:], n]
            spans = dict(
                zip(
                    antecedent[starts].tolist(),
                    zip(starts.tolist(), ends.tolist(), strict=True),
                    strict=True,
                )
            )
        return cls(
            spans,
            [str(u) for u in uniques],
            codes.astype(np.int32),
            df["confidence"].to_numpy(np.float64),
            df["lift"].to_numpy(np.float64),
            df["support"].to_numpy(np.float64),
            df["pair_baskets"].to_numpy(np.int64),
        )

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._spans

    def __len__(self) -> int:
        """Number of antecedents (items that have at least one rule)."""
        return len(self._spans)

    def for_item(self, item_id: str, k: int = 10) -> list[Rule]:
        """The best ``k`` rules of ``item_id`` in rank order; [] for an item without rules."""
        span = self._spans.get(item_id)
        if span is None or k <= 0:
            return []
        start = span[0]
        end = min(span[1], start + k)
        ids = self._ids
        return [
            Rule(item_id, ids[c], conf, lift, sup, pairs)
            for c, conf, lift, sup, pairs in zip(
                self._consequent[start:end].tolist(),
                self._confidence[start:end].tolist(),
                self._lift[start:end].tolist(),
                self._support[start:end].tolist(),
                self._pairs[start:end].tolist(),
                strict=True,
            )
        ]

    def for_items(
        self, item_ids: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[tuple[str, float, str]]:
        """Merge the rules of several antecedents (``item_ids``, most recent first).

        A consequent scores the highest confidence any antecedent gives it (ties: higher lift,
        then the more recent antecedent); the list is ordered by score, lift, recency of the
        antecedent, then consequent id. Returns ``(consequent, score, antecedent)`` tuples,
        never one of ``item_ids`` (the shopper has them) nor anything in ``exclude``.
        """
        return [(c, conf, a) for c, conf, a, _ in self._merge(item_ids, k, exclude)]

    def for_items_with_lift(
        self, item_ids: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[tuple[str, float, str, float]]:
        """:meth:`for_items` with the winning rule's lift as a fourth element (ranker feature)."""
        return self._merge(item_ids, k, exclude)

    def _merge(
        self, item_ids: Sequence[str], k: int, exclude: Collection[str]
    ) -> list[tuple[str, float, str, float]]:
        if k <= 0:
            return []
        antecedents = list(dict.fromkeys(item_ids))  # duplicates: the most recent one counts
        skip = set(antecedents)
        skip.update(exclude)
        ids = self._ids
        best: dict[str, tuple[float, float, int, str]] = {}
        for pos, a in enumerate(antecedents):
            span = self._spans.get(a)
            if span is None:
                continue
            s, e = span
            for c, conf, lift in zip(
                self._consequent[s:e].tolist(),
                self._confidence[s:e].tolist(),
                self._lift[s:e].tolist(),
                strict=True,
            ):
                item = ids[c]
                if item in skip:
                    continue
                cur = best.get(item)
                if cur is None or conf > cur[0] or (conf == cur[0] and lift > cur[1]):
                    best[item] = (conf, lift, pos, a)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[1][2], kv[0]))
        return [(item, v[0], v[3], v[1]) for item, v in ranked[:k]]


# --------------------------------------------------------------------------- storage
def save_rules(rules: pd.DataFrame, run: Run, name: str = RULES) -> None:
    """Write rules into ``run`` as Parquet, ``attrs`` (basket count and kind) in the schema
    metadata."""
    table = pa.Table.from_pandas(
        rules.loc[:, list(RULE_COLUMNS)], schema=RULES_SCHEMA, preserve_index=False
    )
    table = table.replace_schema_metadata({_ATTRS_KEY: json.dumps(dict(rules.attrs)).encode()})
    run.write_table(name, table)


def load_rules(run: Run, name: str = RULES) -> pd.DataFrame:
    """Read rules written by :func:`save_rules`, ``attrs`` included."""
    table = run.read_arrow(name)
    missing = set(RULE_COLUMNS) - set(table.column_names)
    if missing:
        where = run.part(name, "table")
        raise ValueError(f"{where} is not a rules file: lacks {', '.join(sorted(missing))}")
    meta = table.schema.metadata or {}
    rules = table.select(list(RULE_COLUMNS)).cast(RULES_SCHEMA).to_pandas()
    rules.attrs = json.loads(meta[_ATTRS_KEY]) if _ATTRS_KEY in meta else {}
    return rules
