"""The classic peers and the ``recsys evaluate`` harness, on data small enough to reason about."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.baselines import ALS, EASE, InteractionMatrix, ItemKNN
from models.popularity import Popularity, RecentPopularity
from pipelines.evaluate import GRIDS, evaluate
from pipelines.synth import generate
from recsys.core.settings import Settings
from tests.conftest import run_cli


def _two_tastes() -> sp.csr_matrix:
    """Users 0-5 buy from items 0-3, users 6-11 from items 4-7; item 8 is bought by everyone.

    User 0 lacks item 3 and user 6 lacks item 7: every CF model should fill that gap first.
    """
    x = np.zeros((12, 10), dtype=np.float32)
    x[:6, :4] = x[6:, 4:8] = 1
    x[0, 3] = x[6, 7] = 0
    x[[0, 2, 4, 6, 8, 10, 11], 8] = 1
    return sp.csr_matrix(x)


@pytest.mark.parametrize(
    "model",
    [ItemKNN(k=5), ALS(factors=4, regularization=0.01, alpha=10, iterations=15), EASE(1.0)],
    ids=["knn", "als", "ease"],
)
def test_cf_models_fill_the_gap_in_the_users_taste(model) -> None:
    x = _two_tastes()
    model.fit(x)
    top = model.recommend([0, 6], k=2)
    assert top[0][0] == 3
    assert top[1][0] == 7
    for row, items in zip([0, 6], top, strict=True):
        assert not set(items) & set(x[row].indices)  # seen items are excluded


def test_popularity_excludes_seen_and_includes_them_on_request() -> None:
    x = _two_tastes()
    pop = Popularity().fit(x)
    assert pop.recommend([2], k=3) == [[4, 5, 6]]  # 8 (most popular) and 0-3 are seen
    assert pop.recommend([2], k=1, exclude_seen=False) == [[8]]
    # a user who has seen everything but one item gets just that item
    assert len(pop.recommend([0], k=10)[0]) == 10 - x[0].nnz


def test_recent_popularity_uses_the_window_only_when_time_varies() -> None:
    x = _two_tastes()
    same = np.full(3, np.datetime64("2020-01-01"))
    assert RecentPopularity(7).fit(x, np.array([5, 5, 5]), same).recommend([11], 1) == [[0]]
    ts = np.array(["2020-01-01", "2020-03-01", "2020-03-02"], dtype="datetime64[ns]")
    recent = RecentPopularity(7).fit(x, np.array([1, 5, 5]), ts)
    assert recent.recommend([1], 1) == [[5]]  # 5 is the only item bought in the last week


def test_ease_matches_a_dense_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((80, 40)) < 0.15).astype(np.float32))
    lam = 5.0
    model = EASE(lam).fit(x)
    gram = x.T.toarray().astype(np.float64) @ x.toarray()
    p = np.linalg.inv(gram + lam * np.eye(40))
    b = -p / np.diag(p)[np.newaxis, :]
    np.fill_diagonal(b, 0.0)
    assert model.weights.dtype == np.float32
    np.testing.assert_allclose(model.weights, b, atol=1e-5)


def test_ease_refuses_a_matrix_over_its_memory_budget() -> None:
    x = sp.csr_matrix(np.eye(100, dtype=np.float32))
    with pytest.raises(MemoryError, match="memory_gb"):
        EASE(memory_gb=1e-6).fit(x)


def test_interaction_matrix_counts_pairs_and_maps_ids() -> None:
    frame = pd.DataFrame({"user_id": ["b", "a", "a"], "item_id": ["x", "y", "y"]})
    m = InteractionMatrix.from_frame(frame)
    assert m.user_ids.tolist() == ["a", "b"] and m.item_ids.tolist() == ["x", "y"]
    assert m.matrix[m.user_index["a"], m.item_index["y"]] == 2.0
    assert m.matrix.dtype == np.float32


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small generated shop whose canonical tables are copied straight to ``validated/``."""
    home = tmp_path_factory.mktemp("eval_home")
    settings = Settings(home=home)
    generate(settings.raw_dir, 500, 150, 30, 3, progress=False)
    settings.validated_dir.mkdir(parents=True)
    for table in ("interactions", "items", "users"):
        shutil.copy(settings.raw_dir / f"{table}.parquet", settings.validated_dir)
    return settings


@pytest.mark.e2e
def test_harness_temporal_split_writes_every_model(shop: Settings) -> None:
    result = evaluate(shop, split="temporal", test_fraction=0.2, k_max=100, tune=True)
    assert "no trained run" in result["served"]["error"]  # nothing trained in this home
    assert result["protocol"]["split"] == "temporal"
    assert result["protocol"]["tuning"]["grids"] == GRIDS
    assert result["dataset"]["eval_users"] > 10
    models = result["models"]
    assert set(models) == {"popularity", "popularity_recent", "item_knn", "als", "ease"}
    for name, m in models.items():
        o = m["overall"]
        for key in ("recall@10", "ndcg@10", "map@12", "hit@10", "coverage@10", "recall@100"):
            assert 0.0 <= o[key] <= 1.0, (name, key)
        assert o["recall@10"] <= o["recall@100"] + 1e-12
        assert o["users"] == result["dataset"]["eval_users"]
    # each model's fit is timed on its own: together they fit in the whole run's time
    fits = [m["fit_seconds"] for m in models.values()]
    assert min(fits) >= 0 and max(fits) > 0 and sum(fits) <= result["seconds"] + 0.1
    for name in GRIDS:
        tried = models[name]["tuning"]
        assert tried and models[name]["params"] in [t["params"] for t in tried]
        assert models[name]["params"] == max(tried, key=lambda t: t["recall@10"])["params"]
    # popularity shows the same few items to everyone; CF spreads over the catalogue
    assert models["ease"]["overall"]["coverage@10"] > models["popularity"]["overall"]["coverage@10"]
    report = shop.reports_dir / "evaluation"
    saved = json.loads((report / "evaluation.json").read_text())
    assert set(saved) >= {"dataset", "protocol", "models", "served"}
    assert "| ease |" in (report / "report.md").read_text()


@pytest.mark.e2e
def test_harness_with_a_holdout_file_and_no_tuning(shop: Settings, tmp_path: Path) -> None:
    events = pd.read_parquet(shop.validated_dir / "interactions.parquet")
    purchases = events[events["event_type"] == "purchase"]
    holdout = tmp_path / "holdout.parquet"
    test = purchases.tail(300).copy()
    test["item_id"] = purchases["item_id"].head(300).to_numpy()  # mostly pairs not in train
    test.to_parquet(holdout)
    result = evaluate(shop, holdout=holdout, tune=False, models=("popularity", "ease"))
    assert result["protocol"]["split"] == "holdout"
    assert result["models"]["ease"]["tuning"] == []
    assert result["models"]["ease"]["params"] == {"lambda": 400}


@pytest.mark.e2e
def test_cli_evaluate(shop: Settings, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = run_cli(shop.home, "evaluate", "--split", "temporal", "--no-tune", "--json", str(out))
    assert "ease" in proc.stdout
    assert json.loads(out.read_text())["models"]["als"]["overall"]["users"] > 0
