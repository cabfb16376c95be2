"""The classic peers and the ``recsys evaluate`` harness, on data small enough to reason about."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.baselines import (
    ALS,
    EASE,
    InteractionMatrix,
    ItemKNN,
    LocalEASE,
    _inverse_spd_in_place,
)
from models.metrics import (
    curve_ks,
    decile_shares,
    evaluate_all,
    evaluate_with_curve,
    popularity_deciles,
)
from models.popularity import Popularity, RecentPopularity
from pipelines.evaluate import GRIDS, evaluate
from pipelines.evaluation_report import main, write_html_report
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


def test_local_ease_is_ease_when_every_pair_is_bought_together_and_keeps_its_support() -> None:
    rng = np.random.default_rng(2)
    dense_buys = sp.csr_matrix((rng.random((300, 15)) < 0.6).astype(np.float32))
    gram = (dense_buys.T @ dense_buys).toarray()
    assert (gram > 0).all()  # every pair co-occurs: a support of all partners is all items
    expected = EASE(5.0).fit(dense_buys).weights
    for batch in (1, 4, 256):  # batches pad to their widest system: padding must not leak
        local = LocalEASE(5.0, support=100, solve_batch=batch).fit(dense_buys)
        np.testing.assert_allclose(local.weights.toarray(), expected, atol=1e-5)
    # the systems are the same whether co-counts come from rows or from the dense hub block
    by_rows = LocalEASE(5.0, support=8, hub_items=0).fit(dense_buys).weights.toarray()
    for hubs in (3, 15):
        mixed = LocalEASE(5.0, support=8, hub_items=hubs).fit(dense_buys).weights.toarray()
        np.testing.assert_allclose(mixed, by_rows, atol=1e-6)

    sparse_buys = sp.csr_matrix((rng.random((400, 60)) < 0.05).astype(np.float32))
    narrow = LocalEASE(5.0, support=3).fit(sparse_buys)
    co = (sparse_buys.T @ sparse_buys).toarray()
    np.fill_diagonal(co, 0)
    columns = narrow.weights.tocsc()
    for item in range(60):
        support = columns.indices[columns.indptr[item] : columns.indptr[item + 1]]
        assert len(support) == min(3, np.count_nonzero(co[:, item]))
        if len(support):  # the strongest partners, none weaker than one left out
            assert co[support, item].min() >= np.delete(co[:, item], support).max()
    assert narrow.recommend([0, 1], 5)  # a peer like the others: it ranks users


def test_the_spd_inverse_is_computed_in_its_own_buffer_in_chunks() -> None:
    """Both triangles are the inverse's, whatever the chunk the mirrored half is copied in."""
    rng = np.random.default_rng(1)
    m = rng.random((50, 30))
    spd = (m @ m.T + 3 * np.eye(50)).astype(np.float32)
    expected = np.linalg.inv(spd.astype(np.float64))
    for chunk in (7, 16, 50, 1024):
        a = spd.copy()
        buffer = a.__array_interface__["data"][0]
        _inverse_spd_in_place(a, chunk=chunk)
        assert a.__array_interface__["data"][0] == buffer
        np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a, a.T)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        _inverse_spd_in_place(-spd.copy())


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
    assert set(models) == {
        "popularity", "popularity_recent", "item_knn", "als", "ease", "ease_local"
    }  # fmt: skip
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
    # EASE over each item's strongest partners ranks close to dense EASE on the small shop
    assert models["ease_local"]["params"] == {"lambda": 400, "support": 300}
    local, dense = (models[m]["overall"]["recall@10"] for m in ("ease_local", "ease"))
    assert local >= 0.9 * dense
    report = shop.reports_dir / "evaluation"
    saved = json.loads((report / "evaluation.json").read_text())
    assert set(saved) >= {"dataset", "protocol", "models", "served"}
    assert "| ease |" in (report / "report.md").read_text()
    assert "<td class='name'>als</td>" in (report / "report.html").read_text()


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


# --------------------------------------------------------------------------- report.html
def test_curve_is_the_table_at_each_k() -> None:
    """The curve comes from the same pass as the flat metrics: equal at K=10, same flat keys."""
    truth = {"u1": {"a", "b"}, "u2": {"z"}, "u3": {"c"}}
    rankings = {"u1": ["a", "x", "b", "y", "c"], "u2": ["x", "y", "z", "w", "v"]}
    assert curve_ks(100) == (1, 5, 10, 20, 50, 100) and curve_ks(30) == (1, 5, 10, 20, 30)
    out = evaluate_with_curve(rankings, truth, (2, 4), (3,), n_items=8, curve=(1, 2, 3, 5))
    flat = evaluate_all(rankings, truth, (2, 4), (3,), n_items=8)
    assert {k: v for k, v in out.items() if k != "curve"} == flat
    assert out["curve"]["k"] == [1, 2, 3, 5]
    assert out["curve"]["recall"][1] == flat["recall@2"]
    assert out["curve"]["ndcg"][1] == flat["ndcg@2"]


def test_popularity_deciles_split_the_catalogue_in_tenths() -> None:
    items = [f"i{n}" for n in range(20)]
    decile_of = popularity_deciles(items, list(range(20)))  # i0 least popular, i19 most
    assert decile_of["i0"] == decile_of["i1"] == 0 and decile_of["i19"] == 9
    assert sorted(decile_of.values()) == [d for d in range(10) for _ in range(2)]
    shares = decile_shares([["i19", "i18", "i0", "new"], ["i19"]], decile_of, k=3)
    assert shares[9] == pytest.approx(3 / 4) and shares[0] == pytest.approx(1 / 4)  # "new" cut
    assert decile_shares([["new"]], decile_of, k=None)[0] == 1.0  # not in training: D1
    assert sum(decile_shares([], decile_of)) == 0.0


@pytest.fixture(scope="module")
def evaluated(shop: Settings) -> dict:
    """Three fast peers, tuned, without a served run (its block is then an error); ``report``
    is the page this run wrote (read now: other tests of the module share the data root)."""
    result = evaluate(shop, split="temporal", test_fraction=0.2, tune=True,
                      models=("popularity", "item_knn", "ease"))  # fmt: skip
    report = shop.reports_dir / "evaluation"
    return {"result": result, "html": (report / "report.html").read_text(),
            "md": (report / "report.md").read_text()}  # fmt: skip


def test_evaluation_json_has_curves_and_popularity_deciles(evaluated: dict) -> None:
    result = evaluated["result"]
    assert result["protocol"]["curve_ks"] == [1, 5, 10, 20, 50, 100]
    assert len(result["popularity"]["truth"]) == 10
    assert sum(result["popularity"]["truth"]) == pytest.approx(1.0)
    for name, m in result["models"].items():
        for segment in ("overall", "cold_users", "cold_items"):
            s = m[segment]
            curve = s["curve"]
            at10 = curve["k"].index(10)
            assert curve["recall"][at10] == s["recall@10"], (name, segment)
            assert curve["ndcg"][at10] == s["ndcg@10"], (name, segment)
        assert len(m["popularity_deciles"]) == 10
        assert sum(m["popularity_deciles"]) == pytest.approx(1.0), name
    # popularity recommends the head of the catalogue: its top 10 sits in the top decile(s)
    assert result["models"]["popularity"]["popularity_deciles"][9] > 0.5


def test_report_html_is_self_contained_with_every_section(evaluated: dict) -> None:
    page = evaluated["html"]
    for name in evaluated["result"]["models"]:
        assert f"<td class='name'>{name}</td>" in page
    assert page.count('<img class="plot"') >= 5  # curves, coverage, deciles, 2 cold panels
    assert page.count('src="data:image/svg+xml;base64,') >= 5
    assert "Cold users" in page and "Cold items" in page
    assert "Hyper-parameters" in page and "<span class=tag>chosen</span>" in page
    assert 'alt="Share of top-10 per popularity decile"' in page
    assert "no trained run" in page  # the served pipeline's error is shown, not hidden
    assert "http://" not in page and "https://" not in page  # nothing fetched
    assert "[report.html](report.html)" in evaluated["md"]


def test_report_renders_an_older_or_partial_evaluation_json(
    evaluated: dict, tmp_path: Path
) -> None:
    """Files written before the curves and deciles existed (e.g. the committed ASOS run), and
    the partial ones written after each model, render with a note instead of failing."""
    old = json.loads(json.dumps(evaluated["result"]))
    old.pop("popularity")
    old["protocol"].pop("curve_ks")
    for m in old["models"].values():
        m.pop("popularity_deciles")
        for segment in ("overall", "cold_users", "cold_items"):
            if m[segment]:
                m[segment].pop("curve")
    old["served"] = {"overall": old["models"]["ease"]["overall"], "run": "r1",
                     "sources_alone": {"item_item": old["models"]["ease"]["overall"]},
                     "top10_source_share": {"item_item": 1.0}}  # fmt: skip
    page = write_html_report(tmp_path / "old", old).read_text()
    assert "No popularity deciles in this evaluation.json" in page
    assert "their curves use only the table" in page
    assert "served pipeline" in page and "Each candidate source alone" in page
    partial = json.loads(json.dumps(evaluated["result"])) | {"served": None}
    partial["models"] = {"popularity": partial["models"]["popularity"]}
    page = write_html_report(tmp_path / "partial", partial).read_text()
    assert "The served pipeline is not in this file" in page
    assert "<td class='name'>ease</td>" not in page
    saved = tmp_path / "evaluation.json"  # a script regenerates the page from a saved file
    saved.write_text(json.dumps(partial))
    assert main([str(saved)]) == tmp_path / "report.html"
    assert (tmp_path / "report.html").read_text() == page  # deterministic: same JSON, same page
