import math

import pytest

from models.metrics import evaluate_rankings, ndcg_at_k, recall_at_k
from models.popularity import recommend_popular


def test_recall_divides_by_min_of_k_and_relevant() -> None:
    assert recall_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(1.0)
    assert recall_at_k(["a", "b", "c"], {"a", "z"}, 3) == pytest.approx(0.5)
    # 3 relevant, k=2, one hit in the top 2 -> 1 / min(2, 3)
    assert recall_at_k(["a", "b", "c"], {"b", "c", "d"}, 2) == pytest.approx(0.5)


def test_ndcg_by_hand() -> None:
    # hit at rank 2 of 3, one relevant: (1/log2(3)) / (1/log2(2))
    assert ndcg_at_k(["x", "a", "y"], {"a"}, 3) == pytest.approx(1 / math.log2(3))
    # hits at ranks 1 and 3, two relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 + 1 / 2) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, 3) == pytest.approx(expected)
    assert ndcg_at_k(["x", "y"], {"a"}, 2) == 0.0


def test_evaluate_rankings_averages_users_and_counts_missing_as_miss() -> None:
    truth = {"u1": {"a"}, "u2": {"b"}, "u3": set()}
    out = evaluate_rankings({"u1": ["a", "x"]}, truth, k=2)
    assert out["users"] == 2
    assert out["recall@2"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 1)


def test_recommend_popular_skips_what_each_user_bought() -> None:
    ranking = ["a", "b", "c", "d"]
    out = recommend_popular(ranking, {"u1": {"a", "c"}}, ["u1", "u2"], 2)
    assert out == {"u1": ["b", "d"], "u2": ["a", "b"]}


def test_map_at_k_by_hand() -> None:
    from models.metrics import map_at_k

    # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / min(3, 2)
    assert map_at_k(["a", "x", "b"], {"a", "b"}, 3) == pytest.approx((1 + 2 / 3) / 2)
    # one hit at rank 2, 3 relevant, k=2: (1/2) / min(2, 3)
    assert map_at_k(["x", "a", "b"], {"a", "c", "d"}, 2) == pytest.approx(0.25)
    assert map_at_k(["x"], {"a"}, 1) == 0.0
    with pytest.raises(ValueError):
        map_at_k(["a"], set(), 1)


def test_hit_rate_and_coverage_by_hand() -> None:
    from models.metrics import catalog_coverage, hit_rate_at_k

    assert hit_rate_at_k(["x", "a"], {"a"}, 2) == 1.0
    assert hit_rate_at_k(["x", "a"], {"a"}, 1) == 0.0
    rankings = {"u1": ["a", "b", "c"], "u2": ["a", "d", "e"]}
    assert catalog_coverage(rankings, 10, 2) == pytest.approx(3 / 10)  # a, b, d
    assert catalog_coverage(rankings, 10, 3) == pytest.approx(5 / 10)


def test_evaluate_all_matches_the_per_user_functions() -> None:
    from models.metrics import evaluate_all, map_at_k

    truth = {"u1": {"a", "b"}, "u2": {"z"}, "u3": set(), "u4": {"c"}}
    rankings = {"u1": ["a", "x", "b", "y"], "u2": ["x", "y", "z", "w"]}  # u4: no ranking
    out = evaluate_all(rankings, truth, ks=(2, 4), map_ks=(3,), n_items=8)
    assert out["users"] == 3
    assert set(out) >= {"recall@2", "ndcg@4", "map@2", "map@3", "map@4", "hit@2", "coverage@4"}
    assert out["recall@2"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert out["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["hit@2"] == pytest.approx(1 / 3)
    expected_ndcg = ((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)) + 1 / math.log2(4)) / 3
    assert out["ndcg@4"] == pytest.approx(expected_ndcg)
    expected_map = (map_at_k(rankings["u1"], truth["u1"], 3) + 1 / 3) / 3
    assert out["map@3"] == pytest.approx(expected_map)
    assert out["coverage@2"] == pytest.approx(3 / 8)  # a, x, y over the evaluated users
