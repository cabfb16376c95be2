"""The ALS source: its fold-in is implicit's own user step, it survives a run round trip, and
its score is evidence for every candidate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.candidates import CandidateGenerator
from models.context import UserContext
from models.sources.als import FoldIn
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.vocab import Vocabulary

pytestmark = pytest.mark.unit

END = pd.Timestamp("2026-11-01", tz="UTC")
OTHERS_OFF = {name: {"enabled": False} for name in ("item_item", "two_tower", "popular",
                                                     "bought_together")}  # fmt: skip


def test_the_fold_in_solves_implicits_user_step() -> None:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    matrix = sp.random(300, 80, density=0.05, random_state=1, format="csr", dtype=np.float32)
    matrix.data[:] = 1.0
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, regularization=0.5, alpha=20.0, iterations=5,
                                        random_state=0, calculate_training_loss=False)  # fmt: skip
        model.fit(matrix, show_progress=False)
    fold_in = FoldIn(model.item_factors, 0.5, 20.0)
    checked = 0
    for user in range(20):
        row = matrix[[user]]
        if row.nnz == 0 or 0 in row.indices:  # index 0 is the vocabulary's unknown item
            continue
        expected = model.recalculate_user(0, row)
        np.testing.assert_allclose(fold_in(row.indices.astype(np.int64)), expected,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        checked += 1
    assert checked >= 10
    assert fold_in(np.array([0, 0])) is None  # no known item: nothing to say


def _shop() -> tuple[Vocabulary, pd.DataFrame, pd.DataFrame]:
    """Two groups of shoppers, each buying within its own half of the catalogue."""
    rng = np.random.default_rng(0)
    items = [f"i{n:02d}" for n in range(40)]
    rows = [(f"u{u:03d}", items[int(i)], END - pd.Timedelta(days=1)) for u in range(300)
            for i in rng.choice(20, 4, replace=False) + 20 * (u % 2)]  # fmt: skip
    purchases = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    catalog = pd.DataFrame({"item_id": items, "category": "c", "price": 10.0})
    return Vocabulary(items), purchases, catalog


def test_it_proposes_from_the_historys_side_and_scores_every_candidate(tmp_path) -> None:
    vocab, purchases, catalog = _shop()
    settings = Settings(home=tmp_path, sources={**OTHERS_OFF, "als": {"k": 10, "factors": 4}})
    fitted = CandidateGenerator.fit(settings, vocab, purchases, catalog, None, END, None)
    history = ["i01", "i02", "i03"]  # the first half's shoppers
    ctx = UserContext("new", history=history)
    cand = fitted.generate(ctx)
    assert len(cand) == 10 and not set(vocab.indices(history)) & set(cand.items.tolist())
    assert (cand.items <= vocab.indices(["i19"])[0]).mean() >= 0.9  # mostly its own half
    assert np.isfinite(cand.column("als_score")).all()
    assert (np.diff(cand.column("als_score")[np.argsort(cand.column("als_rank"))]) <= 0).all()

    run = Run(tmp_path / "run")
    run.path.mkdir()
    fitted.save(run)
    changed = Settings(home=tmp_path, sources={**OTHERS_OFF, "als": {"k": 10, "alpha": 1.0}})
    loaded = CandidateGenerator.load(run, changed, vocab, vector_search=None)
    again = loaded.generate(ctx)  # the fit's own regularisation and alpha, not the settings'
    np.testing.assert_array_equal(again.items, cand.items)
    np.testing.assert_allclose(again.column("als_score"), cand.column("als_score"), rtol=1e-5)
    assert loaded.generate(UserContext("anonymous")).items.size == 0  # no history: no factors


def test_its_candidates_are_those_a_scan_of_every_item_gives(tmp_path) -> None:
    """Only items whose factor norm can reach the top are scored, in serving and in the
    ranker's rows alike; what comes out is the best of a full scan, the history left out."""
    vocab, purchases, catalog = _shop()
    settings = Settings(home=tmp_path, sources={**OTHERS_OFF, "als": {"k": 8, "factors": 4}})
    generator = CandidateGenerator.fit(settings, vocab, purchases, catalog, None, END, None)
    source = generator.source("als")
    assert source is not None
    factors = source.fold_in.item_factors
    for n in range(1, 12):
        ctx = UserContext(f"v{n}", history=[f"i{(3 * n + j) % 40:02d}" for j in range(1 + n % 4)])
        cand = generator.generate(ctx)
        user = source.fold_in(generator.seeds_of(ctx))
        scores = factors @ user
        scores[0] = -np.inf  # the vocabulary's unknown item
        scores[generator.catalog.indices(ctx.history)] = -np.inf
        expected = np.sort(np.argsort(-scores, kind="stable")[:8])
        np.testing.assert_array_equal(cand.items, expected)
        np.testing.assert_allclose(cand.column("als_score"), factors[cand.items] @ user,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
