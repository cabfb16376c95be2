"""Array primitives: the norm-bounded inner-product top-k equals a full scan, reading less."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.core.arrays import InnerProductTopK, top_k

pytestmark = pytest.mark.unit


def _factors(n: int = 3000, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Vectors whose norms fall off like popularity (a few large, a long tail of small)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    norms = (1.0 / np.arange(1, n + 1) ** 0.7).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit * rng.permutation(norms)[:, None]


def _full_scan(vectors, query, k, blocked=None):
    scores = vectors @ query
    if blocked is not None:
        scores = np.where(blocked, -np.inf, scores)
    top = top_k(scores, k, finite_only=True)
    return top, scores[top]


@pytest.mark.parametrize("k", [1, 10, 50, 500])
def test_it_equals_the_full_scan_and_reads_a_fraction(k: int) -> None:
    vectors = _factors()
    search = InnerProductTopK(vectors, first=256)
    rng = np.random.default_rng(1)
    read = []
    for _ in range(40):
        query = vectors[rng.integers(0, len(vectors), 5)].sum(axis=0)  # a history's direction
        blocked = np.zeros(len(vectors), dtype=bool)
        blocked[rng.integers(0, len(vectors), 30)] = True
        got, got_scores, scored = search(query, k, blocked)
        expected, expected_scores = _full_scan(vectors, query, k, blocked)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got_scores, expected_scores, rtol=1e-5)
        assert not blocked[got].any()
        read.append(scored)
    if k <= 50:  # the bound is what skips the tail: a full scan would read all 3,000
        assert np.median(read) < 0.6 * len(vectors)


def test_blocked_beyond_the_first_part_and_too_few_left() -> None:
    vectors = _factors(n=500)
    search = InnerProductTopK(vectors, first=16)
    query = vectors[:3].sum(axis=0)
    blocked = np.ones(len(vectors), dtype=bool)
    blocked[[7, 123, 499]] = False  # only three may come back, wherever they sort
    got, scores, scored = search(query, 10, blocked)
    assert sorted(got.tolist()) == [7, 123, 499] and scored == len(vectors)
    assert (np.diff(scores) <= 0).all()
    nothing, _, _ = search(query, 0)
    assert nothing.size == 0


def test_a_zero_query_scores_zero_everywhere() -> None:
    vectors = _factors(n=300)
    got, scores, _ = InnerProductTopK(vectors, first=8)(np.zeros(16, np.float32), 5)
    assert len(set(got.tolist())) == 5 and (scores == 0).all()


def test_its_first_guess_follows_what_queries_need_and_does_not_creep_to_everything() -> None:
    """How many it scores up front is learnt from past queries; a guess that fed on itself
    would drift to a full scan within a few hundred queries (it once did)."""
    vectors = _factors()
    search = InnerProductTopK(vectors, first=len(vectors))  # start from the worst guess
    rng = np.random.default_rng(2)
    read = [search(vectors[rng.integers(0, len(vectors), 5)].sum(axis=0), 10)[2]
            for _ in range(400)]  # fmt: skip
    assert np.median(read[-100:]) < 0.6 * len(vectors)
