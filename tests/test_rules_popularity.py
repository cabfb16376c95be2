"""Association rules and segment popularity on tiny frames whose numbers are computed by hand."""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd
import pytest

from models.association_rules import (
    RULE_COLUMNS,
    BoughtTogether,
    Rule,
    load_rules,
    mine_rules,
    save_rules,
)
from models.popularity import SEGMENT_COLUMNS, PopularityTable, segment_popularity
from recsys.core.run import Run

DAY1 = pd.Timestamp("2024-03-01 10:00", tz="UTC")
DAY2 = pd.Timestamp("2024-03-02 10:00", tz="UTC")


def purchases(rows: list[tuple], session: bool = False) -> pd.DataFrame:
    """(user, item, timestamp[, session_id]) tuples -> a purchases frame."""
    columns = ["user_id", "item_id", "timestamp"] + (["session_id"] if session else [])
    return pd.DataFrame(rows, columns=columns)


def pair_counts(rules: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {(a, c): n for a, c, n in rules[["antecedent", "consequent", "pair_baskets"]].values}


# --------------------------------------------------------------------------- mine_rules
@pytest.fixture
def five_baskets() -> pd.DataFrame:
    """Day baskets {a,b,c} {a,b} {a,c} {b,d} {e}; N = 5, a:3 b:3 c:2 d:1 e:1.

    u1 buys ``a`` twice in one day (still one basket), u5's single item counts in N but pairs
    with nothing. Pairs: ab 2, ac 2, bc 1, bd 1.
    """
    return purchases(
        [
            ("u1", "a", DAY1), ("u1", "b", DAY1), ("u1", "c", DAY1), ("u1", "a", DAY1),
            ("u2", "a", DAY1), ("u2", "b", DAY1),
            ("u3", "a", DAY1), ("u3", "c", DAY1),
            ("u4", "b", DAY1), ("u4", "d", DAY1),
            ("u5", "e", DAY1),
        ]
    )  # fmt: skip


# support = pair / 5, confidence = pair / count(antecedent), lift = confidence / (count(c) / 5)
HAND_RULES = [
    # antecedent, consequent, pair_baskets, support, confidence, lift, rank
    ("a", "c", 2, 2 / 5, 2 / 3, (2 / 3) / (2 / 5), 1),  # ties a->b on confidence, higher lift
    ("a", "b", 2, 2 / 5, 2 / 3, (2 / 3) / (3 / 5), 2),
    ("b", "a", 2, 2 / 5, 2 / 3, (2 / 3) / (3 / 5), 1),
    ("b", "d", 1, 1 / 5, 1 / 3, (1 / 3) / (1 / 5), 2),  # lift 5/3 beats b->c's 5/6
    ("b", "c", 1, 1 / 5, 1 / 3, (1 / 3) / (2 / 5), 3),
    ("c", "a", 2, 2 / 5, 1.0, 1.0 / (3 / 5), 1),
    ("c", "b", 1, 1 / 5, 1 / 2, (1 / 2) / (3 / 5), 2),
    ("d", "b", 1, 1 / 5, 1.0, 1.0 / (3 / 5), 1),
]


def hand_frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(RULE_COLUMNS)).astype(
        {"pair_baskets": "int64", "rank": "int64"}
    )


def test_support_confidence_lift_by_hand(five_baskets: pd.DataFrame) -> None:
    rules = mine_rules(five_baskets, min_pair_baskets=1)
    pd.testing.assert_frame_equal(rules, hand_frame(HAND_RULES), check_exact=False, rtol=1e-12)
    assert rules.attrs == {"baskets": 5, "basket": "day"}


def test_min_pair_baskets_confidence_and_top_n(five_baskets: pd.DataFrame) -> None:
    default = mine_rules(five_baskets)  # min_pair_baskets=2
    kept = default[["antecedent", "consequent", "rank"]].itertuples(index=False, name=None)
    assert list(kept) == [("a", "c", 1), ("a", "b", 2), ("b", "a", 1), ("c", "a", 1)]
    top1 = mine_rules(five_baskets, min_pair_baskets=1, top_n=1)
    assert pair_counts(top1) == {("a", "c"): 2, ("b", "a"): 2, ("c", "a"): 2, ("d", "b"): 1}
    confident = mine_rules(five_baskets, min_pair_baskets=1, min_confidence=0.5)
    expected = [r for r in HAND_RULES if r[4] >= 0.5]  # c->b at exactly 0.5 stays
    assert ("c", "b") in pair_counts(confident)
    pd.testing.assert_frame_equal(confident, hand_frame(expected), check_exact=False, rtol=1e-12)


def test_basket_kinds_give_different_baskets() -> None:
    """u1: session s1 {x,y} and s2 {z} on day 1, {x,z} without a session on day 2; u2: s3 {x,y};
    u3: p on day 1 and q on day 2, neither with a session.

    session: {x,y} {z} {x,z} {x,y} {p} {q} -> N 6, xy 2, xz 1 (a missing session is a day)
    day:     {x,y,z} {x,z} {x,y} {p} {q}   -> N 5, xy 2, xz 2, yz 1
    user:    {x,y,z} {x,y} {p,q}           -> N 3, xy 2, xz 1, yz 1, pq 1
    """
    frame = purchases(
        [
            ("u1", "x", DAY1, "s1"), ("u1", "y", DAY1, "s1"), ("u1", "z", DAY1, "s2"),
            ("u1", "x", DAY2, None), ("u1", "z", DAY2, None),
            ("u2", "x", DAY1, "s3"), ("u2", "y", DAY1, "s3"),
            ("u3", "p", DAY1, None), ("u3", "q", DAY2, None),
        ],
        session=True,
    )  # fmt: skip

    def undirected(kind: str) -> tuple[int, dict[tuple[str, str], int]]:
        rules = mine_rules(frame, basket=kind, min_pair_baskets=1)
        return rules.attrs["baskets"], {k: v for k, v in pair_counts(rules).items() if k[0] < k[1]}

    assert undirected("session") == (6, {("x", "y"): 2, ("x", "z"): 1})
    assert undirected("day") == (5, {("x", "y"): 2, ("x", "z"): 2, ("y", "z"): 1})
    assert undirected("user") == (3, {("x", "y"): 2, ("x", "z"): 1, ("y", "z"): 1, ("p", "q"): 1})
    assert mine_rules(frame).attrs["basket"] == "session"  # auto: session ids present
    no_ids = frame.assign(session_id=None)
    assert mine_rules(no_ids).attrs == {"baskets": 5, "basket": "day"}  # auto: none -> day
    assert mine_rules(frame.drop(columns="session_id")).attrs["basket"] == "day"
    with pytest.raises(ValueError, match="basket must be one of"):
        mine_rules(frame, basket="week")  # type: ignore[arg-type]


def test_day_is_the_utc_date_whatever_the_timestamps_zone() -> None:
    """23:30 and 00:30 UTC are two days, though one day in New York (18:30 and 19:30)."""
    late = pd.Timestamp("2024-03-01 23:30", tz="UTC")
    frame = purchases([("u1", "x", late), ("u1", "y", late + pd.Timedelta(hours=1))])
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("America/New_York")
    assert mine_rules(frame, basket="day", min_pair_baskets=1).attrs["baskets"] == 2
    assert len(mine_rules(frame, basket="user", min_pair_baskets=1)) == 2


def test_big_baskets_count_but_give_no_pairs(caplog: pytest.LogCaptureFixture) -> None:
    big = [(u, i, DAY1) for u in ("u1", "u2") for i in ("p", "q", "r", "s")]
    frame = purchases([*big, ("u3", "p", DAY1), ("u3", "q", DAY1)])
    with caplog.at_level(logging.INFO, logger="models.association_rules"):
        rules = mine_rules(frame, min_pair_baskets=1, max_basket_items=3)
    assert "2 of 3 baskets have more than 3 items" in caplog.text
    assert pair_counts(rules) == {("p", "q"): 1, ("q", "p"): 1}
    # N and the item counts still include the skipped baskets: p is in 3 of 3 baskets.
    assert rules["confidence"].tolist() == [pytest.approx(1 / 3)] * 2
    assert rules["support"].tolist() == [pytest.approx(1 / 3)] * 2
    assert len(mine_rules(frame, min_pair_baskets=1, max_basket_items=4)) == 12  # 4 * 3 directed


def test_empty_input_gives_typed_empty_frame() -> None:
    empty = purchases([]).astype({"timestamp": "datetime64[us, UTC]"})
    rules = mine_rules(empty)
    assert rules.empty and list(rules.columns) == list(RULE_COLUMNS)
    assert rules.dtypes.astype(str).tolist() == [
        "object", "object", "int64", "float64", "float64", "float64", "int64",
    ]  # fmt: skip
    assert rules.attrs == {"baskets": 0, "basket": "day"}
    single = mine_rules(purchases([("u1", "x", DAY1)]))  # one basket, no pair
    assert single.empty and single.dtypes.equals(rules.dtypes) and single.attrs["baskets"] == 1


def test_save_load_round_trip(tmp_path, five_baskets: pd.DataFrame) -> None:
    rules = mine_rules(five_baskets, min_pair_baskets=1)
    save_rules(rules, Run(tmp_path))
    loaded = load_rules(Run(tmp_path))
    pd.testing.assert_frame_equal(loaded, rules)
    assert loaded.attrs == {"baskets": 5, "basket": "day"}
    save_rules(mine_rules(five_baskets.iloc[:0]), Run(tmp_path), "empty")
    empty = load_rules(Run(tmp_path), "empty")
    assert empty.empty and empty.dtypes.equals(rules.dtypes)


# --------------------------------------------------------------------------- BoughtTogether
@pytest.fixture
def bought_together() -> BoughtTogether:
    rows = [
        # antecedent, consequent, pair_baskets, support, confidence, lift, rank
        ("a", "x", 6, 0.06, 0.6, 2.0, 1),
        ("a", "y", 5, 0.05, 0.5, 3.0, 2),
        ("a", "b", 4, 0.04, 0.4, 1.0, 3),
        ("b", "y", 5, 0.05, 0.5, 4.0, 1),
        ("b", "z", 5, 0.05, 0.5, 1.0, 2),
        ("b", "x", 3, 0.03, 0.3, 1.0, 3),
        ("d", "w", 5, 0.05, 0.5, 1.0, 1),
        ("e", "w", 5, 0.05, 0.5, 1.0, 1),
    ]
    shuffled = hand_frame(rows).sample(frac=1.0, random_state=3)  # rank, not row order, counts
    return BoughtTogether.from_frame(shuffled)


def test_for_item(bought_together: BoughtTogether) -> None:
    assert bought_together.for_item("a", 2) == [
        Rule("a", "x", 0.6, 2.0, 0.06, 6),
        Rule("a", "y", 0.5, 3.0, 0.05, 5),
    ]
    assert [r.consequent for r in bought_together.for_item("b")] == ["y", "z", "x"]
    assert bought_together.for_item("nope") == [] and bought_together.for_item("a", 0) == []
    assert "a" in bought_together and "x" not in bought_together and len(bought_together) == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        bought_together.for_item("a")[0].confidence = 1.0  # type: ignore[misc]


def test_for_items_merges_by_max_confidence_then_lift(bought_together: BoughtTogether) -> None:
    # x: 0.6 via a (b gives 0.3); y: 0.5 from both, b's lift 4 beats a's 3; z: 0.5 via b;
    # b itself is an antecedent, so never suggested.
    assert bought_together.for_items(["a", "b", "unknown"], 10) == [
        ("x", 0.6, "a"),
        ("y", 0.5, "b"),
        ("z", 0.5, "b"),
    ]
    assert bought_together.for_items(["a", "b"], 2) == [("x", 0.6, "a"), ("y", 0.5, "b")]
    assert bought_together.for_items_with_lift(["a", "b"], 2) == [
        ("x", 0.6, "a", 2.0),
        ("y", 0.5, "b", 4.0),
    ]
    assert bought_together.for_items(["a", "b"], 10, exclude={"x", "z"}) == [("y", 0.5, "b")]
    assert bought_together.for_items(["a"], 10) == [
        ("x", 0.6, "a"),
        ("y", 0.5, "a"),
        ("b", 0.4, "a"),
    ]
    # Equal confidence and lift: the more recent antecedent (earlier in the list) is named.
    assert bought_together.for_items(["e", "d"], 5) == [("w", 0.5, "e")]
    assert bought_together.for_items(["d", "e"], 5) == [("w", 0.5, "d")]
    assert bought_together.for_items([], 5) == [] and bought_together.for_items(["a"], 0) == []


def test_mined_rules_serve_end_to_end(five_baskets: pd.DataFrame) -> None:
    served = BoughtTogether.from_frame(mine_rules(five_baskets, min_pair_baskets=1))
    # c -> a (1.0) beats b -> a (2/3); d -> b (1.0) beats c -> b (0.5); a, b, c are held.
    assert served.for_items(["c", "d"], 5) == [("a", 1.0, "c"), ("b", 1.0, "d")]
    assert served.for_items(["b"], 5) == [("a", pytest.approx(2 / 3), "b"),
                                          ("d", pytest.approx(1 / 3), "b"),
                                          ("c", pytest.approx(1 / 3), "b")]  # fmt: skip


# --------------------------------------------------------------------------- popularity
END = pd.Timestamp("2024-02-01", tz="UTC")


def ago(days: float) -> pd.Timestamp:
    return END - pd.Timedelta(days=days)


@pytest.fixture
def shop() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """7d = [END-7d, END): a (u1, u4 at exactly END-7d), b (u1, u3); c at END is not counted.

    30d adds a (u2, day 10); "all" adds c (u3, day 40). All-time: a 3, b 2, c 1.
    """
    bought = purchases(
        [
            ("u1", "a", ago(1)), ("u1", "b", ago(2)), ("u2", "a", ago(10)), ("u3", "c", ago(40)),
            ("u3", "b", ago(3)), ("u2", "c", END), ("u4", "a", ago(7)),
        ]
    )  # fmt: skip
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "category": ["tops", None, "shoes"], "price": [1, 2, 3]}
    )
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age_bucket": ["18-24", "25-34", None]})
    return bought, items, users


def rows_of(frame: pd.DataFrame, window: str, segment_type: str, segment: str) -> list[tuple]:
    sel = frame[
        (frame["window"] == window)
        & (frame["segment_type"] == segment_type)
        & (frame["segment"] == segment)
    ]
    return list(sel[["item_id", "purchases", "score", "rank"]].itertuples(index=False, name=None))


def test_segment_popularity_windows_segments_and_ranks(shop) -> None:
    frame = segment_popularity(*shop, end=END)
    assert list(frame.columns) == list(SEGMENT_COLUMNS)
    assert frame["window"].unique().tolist() == ["7d", "30d", "all"]
    # a and b tie 2-2 in the week: a's all-time 3 beats b's 2.
    assert rows_of(frame, "7d", "all", "") == [("a", 2, 0.5, 1), ("b", 2, 0.5, 2)]
    assert rows_of(frame, "30d", "all", "") == [("a", 3, 0.6, 1), ("b", 2, 0.4, 2)]
    assert rows_of(frame, "all", "all", "") == [
        ("a", 3, 0.5, 1), ("b", 2, pytest.approx(1 / 3), 2), ("c", 1, pytest.approx(1 / 6), 3),
    ]  # fmt: skip
    # b has a null category; u3 a null age bucket and u4 no user row: both "unknown".
    assert rows_of(frame, "7d", "category", "unknown") == [("b", 2, 1.0, 1)]
    assert rows_of(frame, "all", "category", "shoes") == [("c", 1, 1.0, 1)]
    assert rows_of(frame, "7d", "category", "shoes") == []
    assert rows_of(frame, "30d", "age_bucket", "25-34") == [("a", 1, 1.0, 1)]
    assert rows_of(frame, "7d", "age_bucket", "unknown") == [("a", 1, 0.5, 1), ("b", 1, 0.5, 2)]
    assert set(frame["segment_type"]) == {"all", "category", "age_bucket"}


def test_segment_popularity_options(shop) -> None:
    bought, items, _ = shop
    no_users = segment_popularity(bought, items, None, end=END, windows=(30,), top_n=1)
    assert set(no_users["segment_type"]) == {"all", "category"}
    assert no_users["window"].unique().tolist() == ["30d"]
    # top_n cuts the list, not the denominator: a is still 3 of 5 purchases.
    assert rows_of(no_users, "30d", "all", "") == [("a", 3, 0.6, 1)]
    # Full tie (same window count, same all-time count): item id decides.
    tie = purchases([("u1", "q", ago(1)), ("u2", "p", ago(1))])
    tied = segment_popularity(tie, items, None, end=END, windows=(None,))
    assert rows_of(tied, "all", "all", "") == [("p", 1, 0.5, 1), ("q", 1, 0.5, 2)]
    empty = segment_popularity(bought.iloc[:0], items, None, end=END)
    assert empty.empty and list(empty.columns) == list(SEGMENT_COLUMNS)
    assert empty.dtypes.equals(tied.dtypes)
    for bad in ((7, 7), (0,), (), (7.5,), ("7",)):
        with pytest.raises(ValueError):
            segment_popularity(bought, items, None, end=END, windows=bad)


def test_popularity_table_lookup_and_fill(shop) -> None:
    table = PopularityTable.from_frame(segment_popularity(*shop, end=END).sample(frac=1.0))
    assert table.windows == ("7d", "30d", "all")
    assert table.categories == ("shoes", "tops", "unknown")
    assert table.top(1) == [("a", 0.5)]
    assert table.top(10, "all") == [
        ("a", 0.5),
        ("b", pytest.approx(1 / 3)),
        ("c", pytest.approx(1 / 6)),
    ]
    # "tops" in the week has only a; b comes from the week's list, c from the all-time list.
    assert table.top(3, "7d", category="tops") == [
        ("a", 1.0),
        ("b", 0.5),
        ("c", pytest.approx(1 / 6)),
    ]
    # No shoes sold this week, and an unknown category: everything comes from the fallbacks.
    assert [i for i, _ in table.top(3, "7d", category="shoes")] == ["a", "b", "c"]
    assert [i for i, _ in table.top(3, "7d", category="hats")] == ["a", "b", "c"]
    # category wins over age bucket; age bucket over everyone.
    assert table.top(1, "30d", category="unknown", age_bucket="25-34") == [("b", 1.0)]
    assert table.top(1, "30d", age_bucket="25-34") == [("a", 1.0)]
    assert table.top(5, "7d", exclude={"a"}) == [("b", 0.5), ("c", pytest.approx(1 / 6))]
    assert table.top(1, "7d", exclude={"a"}) == [("b", 0.5)]
    assert table.top(5, "7d", exclude=["a", "b", "c"]) == [] and table.top(0) == []
    with pytest.raises(ValueError, match="unknown window '90d'; allowed: 7d, 30d, all"):
        table.top(5, "90d")
