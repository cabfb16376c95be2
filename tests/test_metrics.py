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
