"""Every endpoint of the API against the real pipeline output (``pipeline_home``), no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from models.association_rules import load_rules
from models.context import UserContext
from pipelines.embed import read_vectors
from recsys.core.run import Run
from recsys.core.schema import table_path
from serving.app import create_app
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def client(pipeline_settings) -> TestClient:
    with TestClient(create_app(pipeline_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def shop(pipeline_settings) -> dict:
    """Catalogue, purchases and one customer with a few purchases."""
    s = pipeline_settings
    items = pd.read_parquet(table_path(s.validated_dir, "items"))
    inter = pd.read_parquet(table_path(s.validated_dir, "interactions"))
    buys = inter[inter["event_type"] == "purchase"]
    counts = buys.groupby("user_id").size()
    user = str(counts[counts >= 3].index[0])
    return {"items": items, "buys": buys, "user": user,
            "bought": set(buys[buys["user_id"] == user]["item_id"])}  # fmt: skip


def test_recommendations_respect_every_filter(client, shop) -> None:
    items = shop["items"].set_index("item_id")
    category = str(items["category"].value_counts().index[0])
    max_price = float(items["price"].median())
    body = client.get(
        f"/users/{shop['user']}/recommendations",
        params={"k": 10, "category": category, "max_price": max_price, "in_stock": True},
    ).json()
    assert body["items"], body
    for item in body["items"]:
        row = items.loc[item["item_id"]]
        assert row["category"] == category and row["price"] <= max_price
        assert bool(row.get("in_stock", True)) is True
        assert item["item_id"] not in shop["bought"]
    nothing = client.get(f"/users/{shop['user']}/recommendations",
                         params={"category": "no-such-category"}).json()  # fmt: skip
    assert nothing["items"] == []
    bad = client.get(f"/users/{shop['user']}/recommendations", params={"max_price": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "max_price"]


def test_recommendations_merge_sources_and_stay_diverse(client, shop, pipeline_settings) -> None:
    body = client.get(f"/users/{shop['user']}/recommendations", params={"k": 10}).json()
    sources = {s for item in body["items"] for s in item["sources"]}
    assert len(sources) >= 2, body  # the ranker mixes candidate sources
    categories = pd.Series([i["category"] for i in body["items"]]).value_counts()
    assert categories.max() <= 5  # max_category_share 0.5 of k=10
    reasons = [r for item in body["items"] for r in item["reasons"]]
    assert any(r.startswith(("similar to", "often bought together", "matches")) for r in reasons)
    metrics = client.get("/metrics").text
    for stage in ("features", "item_item", "two_tower", "ranker", "rules"):
        assert f'recsys_stage_seconds_count{{stage="{stage}"}}' in metrics


def test_session_recommendations_for_a_visitor_without_an_id(client, shop) -> None:
    browsed = list(shop["buys"]["item_id"].value_counts().index[:3])
    body = client.post("/recommendations", json={"session_items": browsed, "k": 5}).json()
    assert body["fallback"] is False and len(body["items"]) == 5
    assert not set(browsed) & {i["item_id"] for i in body["items"]}
    sources = {s for i in body["items"] for s in i["sources"]}
    assert sources & {"sr", "vsknn", "slist", "cooccurrence"}, body  # the session pipeline
    empty = client.post("/recommendations", json={"session_items": [], "age_bucket": "25-34"})
    assert empty.status_code == 200 and empty.json()["fallback"] is True
    assert len(empty.json()["items"]) == 10
    bad = client.post("/recommendations", json={"session_items": [], "k": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "k"]


@pytest.mark.parametrize("method", ["behaviour", "sessions", "content", "hybrid"])
def test_similar_items_by_each_method(client, shop, method) -> None:
    item = str(shop["buys"]["item_id"].value_counts().index[0])
    body = client.get(f"/items/{item}/similar", params={"method": method, "k": 5}).json()
    assert body["item_id"] == item and body["method"] == method
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 5 and item not in ids and len(set(ids)) == 5
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    reasons = {r for i in body["items"] for r in i["reasons"]}
    expected = {"behaviour": {"bought by the same shoppers"},
                "sessions": {"viewed in the same sessions"}}.get(method)  # fmt: skip
    if expected:
        assert reasons == expected, body
    if method == "hybrid":  # the item has all three kinds of neighbours
        assert {"bought by the same shoppers", "viewed in the same sessions"} < reasons, body


def test_session_neighbours_are_the_session_pipelines_next_clicks(client, shop) -> None:
    """`similar?method=sessions` answers what the session pipeline ranks next after a visit of
    that one item; without a session pipeline, the demo's item2vec run's cosine neighbours."""
    recommender = client.app.state.recommender
    served = recommender.served
    assert served.session_pipeline is not None
    item = str(shop["buys"]["item_id"].value_counts().index[0])
    body = client.get(f"/items/{item}/similar", params={"method": "sessions", "k": 5}).json()
    visit = served.session_pipeline.recommend(UserContext(None, (), [item]), 10)
    assert [i["item_id"] for i in body["items"]] == visit.item_ids()[:5]
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True), body

    pipeline, served.session_pipeline = served.session_pipeline, None
    try:
        assert served.session_run and served.session_run.startswith("item2vec_")
        vectors, items = served.session_vectors, recommender.items
        index = items.index(item)
        body = client.get(f"/items/{item}/similar", params={"method": "sessions", "k": 5}).json()
        cosines = [float(vectors[items.index(i["item_id"])] @ vectors[index])
                   for i in body["items"]]  # fmt: skip
        assert cosines == sorted(cosines, reverse=True) and cosines[0] > 0.3, cosines
        assert [i["score"] for i in body["items"]] == pytest.approx(cosines, abs=1e-5)
    finally:
        served.session_pipeline = pipeline


def test_an_item_nobody_bought_gets_session_or_content_neighbours(client, shop) -> None:
    never = sorted(set(shop["items"]["item_id"]) - set(shop["buys"]["item_id"]))
    if not never:
        pytest.skip("every generated item was bought")
    recommender = client.app.state.recommender
    for item in never[:5]:
        body = client.get(f"/items/{item}/similar", params={"method": "behaviour"}).json()
        browsed = len(recommender._session_neighbours(recommender.items.index(item), 10)[0]) > 0
        assert body["method"] == ("sessions" if browsed else "content"), (item, body)
        assert len(body["items"]) == 10


def test_unknown_item_is_a_404_naming_the_id(client) -> None:
    for path in ("/items/no-such-item/similar", "/items/no-such-item/bought-together"):
        response = client.get(path)
        assert response.status_code == 404 and "no-such-item" in response.json()["detail"]


def test_bought_together_reports_support_confidence_and_lift(client, pipeline_settings) -> None:
    rules = load_rules(Run.current(pipeline_settings.artifacts_dir))
    assert len(rules), "the generated baskets should give some rules"
    item = str(rules["antecedent"].iloc[0])
    body = client.get(f"/items/{item}/bought-together", params={"k": 3}).json()
    expected = rules[rules["antecedent"] == item].sort_values("rank").head(3)
    assert [i["item_id"] for i in body["items"]] == expected["consequent"].tolist()
    first = body["items"][0]
    assert first["confidence"] == pytest.approx(expected["confidence"].iloc[0])
    assert first["lift"] == pytest.approx(expected["lift"].iloc[0]) and 0 < first["support"] <= 1


def test_popular_by_window_and_category(client, shop) -> None:
    body = client.get("/popular", params={"window": "30d", "k": 5}).json()
    assert len(body["items"]) == 5
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    category = str(shop["items"]["category"].value_counts().index[0])
    in_cat = client.get("/popular", params={"category": category, "k": 3}).json()["items"]
    cats = shop["items"].set_index("item_id")["category"]
    assert in_cat and all(cats[i["item_id"]] == category for i in in_cat)
    bad = client.get("/popular", params={"window": "1y"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "window"]


def test_served_pipeline_is_scored_by_recsys_evaluate(pipeline_settings, tmp_path) -> None:
    """``recsys evaluate`` runs the API's pipeline for every test user, beside the peers."""
    out = tmp_path / "evaluation.json"
    run_cli(pipeline_settings.home, "evaluate", "--no-tune", "--json", str(out))
    result = json.loads(out.read_text())
    served = result["served"]
    assert "overall" in served, served
    manifest = Run.current(pipeline_settings.artifacts_dir).manifest
    assert result["protocol"]["cutoff"] == manifest["data"]["cutoff"]  # the run's own split
    best_pop = max(result["models"][m]["overall"]["recall@10"]
                   for m in ("popularity", "popularity_recent"))  # fmt: skip
    assert served["overall"]["recall@10"] > 1.5 * best_pop, served["overall"]
    assert served["overall"]["users"] == result["dataset"]["eval_users"]
    report = pipeline_settings.reports_dir / "evaluation"
    assert (report / "recall_at_k.png").exists()
    assert "| served pipeline |" in (report / "report.md").read_text()


class _Slow:
    """The real store behind a delay: a dependency that answers, but too late."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def search(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.inner.search(*args, **kwargs)


def test_a_slow_dependency_costs_its_budget_not_the_answer(client, shop, monkeypatch) -> None:
    recommender = client.app.state.recommender
    features = recommender.user_features
    budget_s = recommender.settings.serve.search_timeout_ms / 1e3
    monkeypatch.setattr(recommender, "vectors", _Slow(recommender.vectors, 1.0))
    started = time.perf_counter()
    body = client.get(f"/users/{shop['user']}/recommendations").json()
    elapsed = time.perf_counter() - started
    assert body["degraded"] is True and len(body["items"]) == 10
    assert "two_tower" not in {s for i in body["items"] for s in i["sources"]}
    assert not shop["bought"] & {i["item_id"] for i in body["items"]}
    assert elapsed < budget_s + 0.5  # the budget, not the dependency's 1 s
    monkeypatch.undo()

    def slow_features(user_id):
        time.sleep(1.0)
        return features(user_id)

    monkeypatch.setattr(recommender, "user_features", slow_features)
    body = client.get(f"/users/{shop['user']}/recommendations").json()
    assert body["degraded"] is True and body["fallback"] is False and body["items"]
    monkeypatch.undo()
    assert client.get(f"/users/{shop['user']}/recommendations").json()["degraded"] is False


def test_a_new_index_goes_live_without_a_restart_and_rolls_back(client, shop) -> None:
    """`recsys index` publishes a new collection behind the alias; the API follows it."""
    recommender = client.app.state.recommender
    home = recommender.settings.home

    def serving_collection() -> str:
        client.get(f"/users/{shop['user']}/recommendations")  # a request applies a switch
        return client.get("/health").json()["vector_store"]["collection"]

    def wait_for(name: str) -> None:
        deadline = time.monotonic() + 20
        while serving_collection() != name and time.monotonic() < deadline:
            time.sleep(0.2)
        assert serving_collection() == name

    before = serving_collection()
    run_cli(home, "index")
    after = recommender.vectors.alias_target(recommender.settings.vector_store.collection)
    assert after != before
    wait_for(after)
    body = client.get(f"/users/{shop['user']}/recommendations").json()
    assert body["degraded"] is False and len(body["items"]) == 10
    rolled = run_cli(home, "rollback")
    assert before in rolled.stdout and after in rolled.stdout
    wait_for(before)


def test_content_similarity_ranks_by_the_item_text(client, shop, pipeline_settings) -> None:
    """The demo's model has text embeddings: method=content is their cosine, and says so."""
    path = pipeline_settings.item_embeddings_path("text")
    table = pq.read_table(path)
    ids, vectors = table.column("item_id").to_pylist(), read_vectors(table, path)
    item = str(shop["buys"]["item_id"].value_counts().index[0])
    body = client.get(f"/items/{item}/similar", params={"method": "content", "k": 5}).json()
    assert body["method"] == "content"
    assert all(i["reasons"] == ["similar description"] for i in body["items"]), body
    scores = dict(zip(ids, (vectors @ vectors[ids.index(item)]).tolist(), strict=True))
    del scores[item]
    best = sorted(scores.values(), reverse=True)[:5]
    np.testing.assert_allclose([i["score"] for i in body["items"]], best, atol=1e-5)
    for got in body["items"]:  # ties may come in any order; each score is the item's own
        assert abs(scores[got["item_id"]] - got["score"]) < 1e-5


def test_the_openapi_documents_every_error_status_the_api_answers(client) -> None:
    """404 (unknown item), 422 (a bad field) and 503 (a dependency down) are in the schema of
    each route that can answer them, so clients generated from it handle them (#14)."""
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("/items/{item_id}/similar", "get"): {"200", "404", "422"},
        ("/items/{item_id}/bought-together", "get"): {"200", "404", "422"},
        ("/events", "post"): {"200", "404", "422"},
        ("/health", "get"): {"200", "503"},
        ("/users/{user_id}/recommendations", "get"): {"200", "422"},
    }
    for (path, verb), statuses in expected.items():
        assert statuses <= set(paths[path][verb]["responses"]), (path, verb)


def test_session_filters_are_strict_about_types(client) -> None:
    body = {"session_items": [], "in_stock": 0}  # a number is not a boolean
    response = client.post("/recommendations", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "in_stock"
    response = client.post(
        "/recommendations", content='{"session_items": [], "max_price": Infinity}',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "max_price"


def test_the_app_serves_on_single_threaded_kernels_and_restores_them() -> None:
    """Each worker's start-up (the lifespan) puts torch and the BLAS on one thread, so N
    workers do not oversubscribe the cores; shutting down restores what the process had.
    In a fresh interpreter: this one's thread settings are shared with the module's app."""
    script = """
import json, torch
from threadpoolctl import threadpool_info, threadpool_limits
from serving.app import single_threaded_kernels

def now():  # torch's threads and those of the BLAS numpy's products run on
    blas = [p["num_threads"] for p in threadpool_info() if "numpy" in p["filepath"]]
    return [torch.get_num_threads(), blas]

torch.set_num_threads(2)
with threadpool_limits(limits=2):  # as a process on two cores starts
    before = now()
    with single_threaded_kernels():
        inside = now()
    print(json.dumps([before, inside, now()]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])  # fmt: skip
    before, inside, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [2, [2]] and inside == [1, [1]] and after == before
