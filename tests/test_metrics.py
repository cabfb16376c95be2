import math

import pytest

from models import metrics
from models.popularity import recommend_popular


@pytest.mark.parametrize(
    "name, ranked, relevant, k, expected",
    [
        ("recall", ["a", "b", "c"], {"a", "c"}, 3, 1.0),
        ("recall", ["a", "b", "c"], {"a", "z"}, 3, 0.5),
        # 3 relevant, k=2, one hit in the top 2 -> 1 / min(2, 3)
        ("recall", ["a", "b", "c"], {"b", "c", "d"}, 2, 0.5),
        # hit at rank 2 of 3, one relevant: (1/log2(3)) / (1/log2(2))
        ("ndcg", ["x", "a", "y"], {"a"}, 3, 1 / math.log2(3)),
        # hits at ranks 1 and 3, two relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
        ("ndcg", ["a", "x", "b"], {"a", "b"}, 3, (1 + 1 / 2) / (1 + 1 / math.log2(3))),
        ("ndcg", ["x", "y"], {"a"}, 2, 0.0),
        # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / min(3, 2)
        ("map", ["a", "x", "b"], {"a", "b"}, 3, (1 + 2 / 3) / 2),
        # one hit at rank 2, 3 relevant, k=2: (1/2) / min(2, 3)
        ("map", ["x", "a", "b"], {"a", "c", "d"}, 2, 0.25),
        ("map", ["x"], {"a"}, 1, 0.0),
        ("hit_rate", ["x", "a"], {"a"}, 2, 1.0),
        ("hit_rate", ["x", "a"], {"a"}, 1, 0.0),
    ],
)
def test_per_user_metrics_by_hand(name, ranked, relevant, k, expected) -> None:
    metric = getattr(metrics, f"{name}_at_k")
    assert metric(ranked, relevant, k) == pytest.approx(expected)
    with pytest.raises(ValueError):  # undefined for a user without relevant items
        metric(ranked, set(), k)


def test_evaluate_rankings_averages_users_and_counts_missing_as_miss() -> None:
    truth = {"u1": {"a"}, "u2": {"b"}, "u3": set()}
    out = metrics.evaluate_rankings({"u1": ["a", "x"]}, truth, k=2)
    assert out["users"] == 2
    assert out["recall@2"] == pytest.approx(0.5)


def test_recommend_popular_skips_what_each_user_bought() -> None:
    ranking = ["a", "b", "c", "d"]
    out = recommend_popular(ranking, {"u1": {"a", "c"}}, ["u1", "u2"], 2)
    assert out == {"u1": ["b", "d"], "u2": ["a", "b"]}


def test_coverage_by_hand() -> None:
    rankings = {"u1": ["a", "b", "c"], "u2": ["a", "d", "e"]}
    assert metrics.catalog_coverage(rankings, 10, 2) == pytest.approx(3 / 10)  # a, b, d
    assert metrics.catalog_coverage(rankings, 10, 3) == pytest.approx(5 / 10)


def test_evaluate_all_matches_the_per_user_functions() -> None:
    truth = {"u1": {"a", "b"}, "u2": {"z"}, "u3": set(), "u4": {"c"}}
    rankings = {"u1": ["a", "x", "b", "y"], "u2": ["x", "y", "z", "w"]}  # u4: no ranking
    out = metrics.evaluate_all(rankings, truth, ks=(2, 4), map_ks=(3,), n_items=8)
    assert out["users"] == 3
    assert set(out) >= {"recall@2", "ndcg@4", "map@2", "map@3", "map@4", "hit@2", "coverage@4"}
    assert out["recall@2"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert out["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["hit@2"] == pytest.approx(1 / 3)
    expected_ndcg = ((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)) + 1 / math.log2(4)) / 3
    assert out["ndcg@4"] == pytest.approx(expected_ndcg)
    expected_map = (metrics.map_at_k(rankings["u1"], truth["u1"], 3) + 1 / 3) / 3
    assert out["map@3"] == pytest.approx(expected_map)
    assert out["coverage@2"] == pytest.approx(3 / 8)  # a, x, y over the evaluated users
