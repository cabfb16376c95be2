"""The whole platform on a tiny generated shop: CLI stages, Feast, Ray, Qdrant and the API.

Nothing is mocked: ``pipeline_home`` (conftest) runs ``recsys demo --no-serve`` as a user would.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from models.two_tower import WEIGHTS
from recsys.core.event_log import EventLog
from recsys.core.feast_store import open_store
from recsys.core.run import Run
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from recsys.core.vectorstore import open_vector_store
from serving.app import create_app
from tests.conftest import REPO, cli_env, run_cli


@pytest.fixture(scope="module")
def user(pipeline_home) -> str:
    """The shopper whose recommendations `recsys demo` suggests trying."""
    match = re.search(r"/users/(\S+)/recommendations\?k=10", pipeline_home[1])
    assert match, pipeline_home[1][-2000:]
    return match.group(1)


def test_demo_runs_every_stage_and_leaves_its_outputs(pipeline_home, pipeline_settings) -> None:
    _, output = pipeline_home
    for stage in ("data synth", "validate", "features", "materialize", "embed text", "train",
                  "index"):  # fmt: skip
        assert f"✓ {stage}" in output
    s = pipeline_settings
    assert (s.reports_dir / "data_docs" / "index.html").exists()
    for name in ("interactions", "items", "users"):
        assert table_path(s.validated_dir, name).exists()
        assert (s.quarantine_dir / f"{name}.parquet").exists()
    for name in ("user_features", "item_features", "item_attributes"):
        assert (s.features_dir / f"{name}.parquet").exists()
    assert (s.feast_dir / "registry.db").exists() and (s.feast_dir / "online_store.db").exists()
    run = Run.current(s.artifacts_dir)
    assert run.has(WEIGHTS, "tensors") and run.has("item_vectors", "tensors")
    assert {"model_config", "train_config", "data", "metrics"} <= set(run.manifest)
    assert "curl -s 'http://127.0.0.1:8000/users/" in output


#: Lines that only a library writes: log records, tqdm frames, C++ log lines, warnings.
LIBRARY_LINE = re.compile(
    r"\b(INFO|DEBUG|WARNING)\b|core_worker|logging_progress|Warning:|warnings\.warn|"
    r"\d+%\||it/s\]|Loading weights"
)


def test_demo_output_piped_shows_only_the_platforms_lines(pipeline_home) -> None:
    """Through Ray Data and Ray Train, piped: Ray's logs go to the data root's log folder (said
    once), no library line reaches the output, and no table cuts a name short."""
    home, output = pipeline_home
    strays = [line for line in output.splitlines() if LIBRARY_LINE.search(line)]
    assert not strays, "\n".join(strays[:20])
    assert "…" not in output  # rich's ellipsis: a name cut to fit 80 columns
    assert "popularity_recent" in output
    assert output.count("Ray started; its logs:") == 1
    logs = home / "logs"
    assert (logs / "ray-data.log").stat().st_size > 0  # Ray Data's progress lines went here
    assert (logs / "ray-session").is_symlink() and (logs / "ray-session").resolve().is_dir()


def test_recsys_item2vec_trains_scores_and_saves_a_run(pipeline_settings) -> None:
    out = run_cli(pipeline_settings.home, "item2vec", "--no-ray").stdout
    for name in ("item2vec", "cooccurrence", "popularity"):
        assert name in out, out
    runs = sorted(pipeline_settings.artifacts_dir.glob("item2vec_*"))
    assert len(runs) >= 2 and (runs[-1] / "item2vec.safetensors").exists(), out  # fixture's + this
    manifest = json.loads((runs[-1] / "item2vec_manifest.json").read_text())
    m = manifest["metrics"]
    assert m["fit"]["backend"] == "in-process"
    assert m["item2vec"]["hr@20"] > 3 * m["random_hr"]  # far above random on held-out sessions
    assert (pipeline_settings.artifacts_dir / "current").read_text().strip() != runs[-1].name


def test_two_tower_learns_the_planted_taste(pipeline_settings) -> None:
    metrics = Run.current(pipeline_settings.artifacts_dir).manifest["metrics"]
    best_pop = max(metrics["popularity"]["recall@10"], metrics["popularity_recent"]["recall@10"])
    assert metrics["two_tower"]["users"] >= 50
    assert metrics["two_tower"]["recall@10"] > 1.5 * best_pop, metrics


def test_historical_features_are_point_in_time_correct(pipeline_settings) -> None:
    """A training example sees exactly the purchases made before its own day, never later."""
    inter = pd.read_parquet(table_path(pipeline_settings.validated_dir, "interactions"))
    buys = inter[inter["event_type"] == "purchase"]
    sample = buys.sample(200, random_state=0)[["user_id", "item_id", "timestamp"]]
    store = open_store(pipeline_settings)
    got = store.get_historical_features(
        entity_df=sample.rename(columns={"timestamp": "event_timestamp"}),
        features=["user_features:purchases_total", "user_features:purchased_items"],
    ).to_df()
    checked = 0
    for row in got.itertuples():
        day = row.event_timestamp.floor("D")
        before = buys[(buys["user_id"] == row.user_id) & (buys["timestamp"] < day)]
        expected = len(before)
        value = 0 if pd.isna(row.purchases_total) else row.purchases_total
        assert value == expected, (row.user_id, row.event_timestamp)
        later = set(buys[(buys["user_id"] == row.user_id) & (buys["timestamp"] >= day)]["item_id"])
        listed = row.purchased_items
        history = set(listed) if isinstance(listed, list | tuple) else set()
        assert not (history - set(before["item_id"])), "a later purchase leaked into history"
        checked += bool(later)
    assert checked > 0


def test_plain_feast_cli_works_from_the_feature_repo(pipeline_settings) -> None:
    yaml_path = pipeline_settings.feast_dir / "feature_store.yaml"
    env = cli_env(pipeline_settings.home)
    feast = str(REPO / ".venv" / "bin" / "feast")
    now = datetime.now(UTC).isoformat()
    for args in (["apply"], ["materialize-incremental", now], ["feature-views", "list"]):
        proc = subprocess.run([feast, "-f", str(yaml_path), *args], cwd=REPO / "feature_repo",
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "user_features" in proc.stdout


@pytest.fixture(scope="module")
def client(pipeline_settings) -> TestClient:
    with TestClient(create_app(pipeline_settings)) as c:
        yield c


def test_recommendations_exclude_what_the_user_bought(client, user, pipeline_settings) -> None:
    response = client.get(f"/users/{user}/recommendations", params={"k": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == user and body["fallback"] is False and body["model_version"]
    items = body["items"]
    assert len(items) == 10 and len({i["item_id"] for i in items}) == 10
    assert {"item_id", "title", "category", "colour", "price", "score"} <= set(items[0])
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    inter = pd.read_parquet(table_path(pipeline_settings.validated_dir, "interactions"))
    bought = set(inter[(inter["user_id"] == user) & (inter["event_type"] == "purchase")]["item_id"])
    assert bought, "the example user should have a purchase history"
    assert not bought & {i["item_id"] for i in items}


@pytest.mark.parametrize("k", [0, 101, "ten"])
def test_bad_k_is_rejected_naming_the_parameter(client, k) -> None:
    response = client.get("/users/u1/recommendations", params={"k": k})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]


def test_health_reports_each_dependency(client) -> None:
    response = client.get("/health")
    body = response.json()
    assert response.status_code == 200 and body["ok"] is True
    assert all(body[d]["ok"] is True for d in ("model", "feature_store", "vector_store")), body
    assert body["vector_store"]["backend"] == "edge" and body["vector_store"]["points"] > 0


def test_validate_stops_on_a_missing_column(tmp_path) -> None:
    raw = Settings(home=tmp_path).raw_dir
    raw.mkdir(parents=True)
    pd.DataFrame({"item_id": ["a"], "price": [1.0]}).to_parquet(table_path(raw, "items"))
    events = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "event_type": ["view"]})
    events.to_parquet(table_path(raw, "interactions"))  # no timestamp column
    proc = run_cli(tmp_path, "validate", check=False)
    assert proc.returncode == 1
    assert "interactions" in proc.stdout and "timestamp" in proc.stdout


def test_push_source_updates_online_activity_at_once(pipeline_settings) -> None:
    """What the API will do on each event: push, then the next online read sees it."""
    from feast.data_source import PushMode

    store = open_store(pipeline_settings)
    services = {s.name for s in store.list_feature_services()}
    assert {"two_tower_training", "ranking", "user_serving"} <= services
    row = pd.DataFrame({"user_id": ["pushed-user"], "event_timestamp": [pd.Timestamp.now(tz="UTC")],
                        "recent_views": [["i000001"]], "recent_purchases": [["i000002", "i000001"]],
                        "session_events": [3], "applied_seq": [0]})  # fmt: skip
    store.push("user_activity_push", row, to=PushMode.ONLINE)
    online = store.get_online_features(
        features=store.get_feature_service("user_serving"), entity_rows=[{"user_id": "pushed-user"}]
    ).to_dict()
    assert online["recent_purchases"] == [["i000002", "i000001"]]
    assert online["session_events"] == [3]
    assert online["purchases_total"] == [None]  # no batch history for this user


def test_feast_ui_serves_the_repo(pipeline_settings) -> None:
    """`feast ui` from feature_repo/ starts and serves its page (loopback, bounded wait)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feast = str(REPO / ".venv" / "bin" / "feast")
    yaml_path = str(pipeline_settings.feast_dir / "feature_store.yaml")
    proc = subprocess.Popen([feast, "-f", yaml_path, "ui", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO / "feature_repo", env=cli_env(pipeline_settings.home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200 and b"<html" in r.read(2000).lower()
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError("feast ui did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_posted_purchase_leaves_the_next_recommendations_within_a_second(
    client, user, pipeline_settings
) -> None:
    first = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()["items"]
    bought = first[0]["item_id"]
    started = time.monotonic()
    response = client.post(
        "/events", json={"events": [{"user_id": user, "item_id": bought, "event_type": "purchase"}]}
    )
    assert response.status_code == 200 and response.json() == {"accepted": 1, "duplicates": 0}
    after = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
    assert time.monotonic() - started < 1.0
    assert bought not in {i["item_id"] for i in after["items"]} and len(after["items"]) == 10
    logged = (pipeline_settings.home / "events" / "events.jsonl").read_text().splitlines()
    assert json.loads(logged[-1])["item_id"] == bought


def test_a_new_visitor_who_buys_gets_personal_recommendations(client) -> None:
    """Unknown at first: popular items, marked fallback; after a purchase, personal ones."""
    popular = client.get("/users/brand-new-visitor/recommendations", params={"k": 5}).json()
    assert popular["fallback"] is True and len(popular["items"]) == 5
    assert popular["items"][0]["score"] >= popular["items"][-1]["score"]
    item = popular["items"][0]["item_id"]
    events = [{"user_id": "brand-new-visitor", "item_id": item, "event_type": "purchase"}]
    assert client.post("/events", json={"events": events}).status_code == 200
    body = client.get("/users/brand-new-visitor/recommendations", params={"k": 5}).json()
    assert body["fallback"] is False
    assert item not in {i["item_id"] for i in body["items"]}


def test_the_online_row_reader_reads_what_the_feast_sdk_reads(client, user) -> None:
    """The API's per-request read (straight through the online store) against
    ``get_online_features``: batch rows, pushed activity, a visitor known only by pushes and
    an id never seen."""
    recommender = client.app.state.recommender
    store, reader = recommender.online.store, recommender.online.rows
    item = client.get(f"/users/{user}/recommendations", params={"k": 1}).json()["items"][0]
    pushed = [{"user_id": u, "item_id": item["item_id"], "event_type": "view"}
              for u in (user, "reader-check-visitor")]  # fmt: skip
    assert client.post("/events", json={"events": pushed}).status_code == 200
    service = store.get_feature_service("user_serving")
    for key in (user, "reader-check-visitor", "never-seen"):
        sdk = store.get_online_features(features=service, entity_rows=[{"user_id": key}])
        assert reader.read(key) == {k: v[0] for k, v in sdk.to_dict().items()}, key
    assert item["item_id"] in reader.read("reader-check-visitor")["recent_views"]
    assert set(reader.read("never-seen")) == {"user_id", *reader.feature_names}


def test_events_naming_unknown_items_or_types_are_refused(client) -> None:
    unknown = {"user_id": "u1", "item_id": "no-such-item", "event_type": "view"}
    response = client.post("/events", json={"events": [unknown]})
    assert response.status_code == 404 and "no-such-item" in response.json()["detail"]
    bad_type = {"user_id": "u1", "item_id": "i000001", "event_type": "like"}
    response = client.post("/events", json={"events": [bad_type]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "event_type"


def test_a_retried_event_is_acknowledged_and_applied_once(client, pipeline_settings) -> None:
    """An ``event_id`` makes retries idempotent (#14): a client that lost the answer (a
    SIGKILL, a timeout) sends the batch again; the event is acknowledged, logged and folded into
    the online row once, and a restarted API still knows it (the ids come back from the log)."""
    recommender = client.app.state.recommender
    item = recommender.items.item_ids[120]
    event = {"event_id": "retry-1", "user_id": "retrying-buyer", "item_id": item,
             "event_type": "purchase"}  # fmt: skip
    first = client.post("/events", json={"events": [event]}).json()
    again = client.post("/events", json={"events": [event, event]}).json()
    assert first == {"accepted": 1, "duplicates": 0}
    assert again == {"accepted": 2, "duplicates": 2}
    assert recommender.user_features("retrying-buyer")["recent_purchases"].count(item) == 1
    log = pipeline_settings.home / "events" / "events.jsonl"
    assert sum('"retry-1"' in line for line in log.read_text().splitlines()) == 1
    restarted = EventLog(log.parent)
    with restarted.turn():
        assert "retry-1" in restarted.event_ids


def test_parallel_purchases_of_one_user_are_all_kept(client) -> None:
    """Concurrent POST /events for one new visitor: every request answered, every purchase in
    the online row (the read-fold-push once lost 8 of 10, and 1% of requests answered 500)."""
    items = client.app.state.recommender.items.item_ids[100:110]

    def buy(item: str) -> int:
        event = {"user_id": "parallel-buyer", "item_id": item, "event_type": "purchase"}
        return client.post("/events", json={"events": [event]}).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(buy, items))
    assert statuses == [200] * 10
    row = client.app.state.recommender.user_features("parallel-buyer")
    assert set(items) <= set(row["purchased_items"])
    answer = client.get("/users/parallel-buyer/recommendations", params={"k": 20}).json()
    assert not set(items) & {i["item_id"] for i in answer["items"]}


@pytest.mark.parametrize(
    "field, raw",
    [
        ("timestamp", '"0001-01-01T00:00:00+01:00"'),  # once overflowed into a 500
        ("timestamp", '"9999-12-31T23:59:59-01:00"'),
        ("price", "NaN"),  # once broke the 422 handler itself (NaN is not JSON)
        ("price", "Infinity"),  # once accepted and logged
        ("price", "-1"),
    ],
)
def test_events_with_edge_values_are_refused_naming_the_field(client, field, raw) -> None:
    event = '{"user_id": "edge-visitor", "item_id": "i000001", "event_type": "view"'
    body = f'{{"events": [{event}, "{field}": {raw}}}]}}'
    response = client.post("/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == field


def test_items_carry_rank_and_reasons_and_metrics_count_requests(client, user) -> None:
    items = client.get(f"/users/{user}/recommendations", params={"k": 3}).json()["items"]
    assert [i["rank"] for i in items] == [1, 2, 3] and all(i["reasons"] for i in items)
    client.get("/users/somebody-new/recommendations")
    text = client.get("/metrics").text
    assert 'recsys_requests_total{endpoint="/users/{user_id}/recommendations"' in text
    assert 'recsys_stage_seconds_count{stage="two_tower"}' in text
    assert 'recsys_fallbacks_total{reason="unknown_user"}' in text


def test_vector_store_failure_degrades_to_the_other_sources(
    client, user, pipeline_settings, monkeypatch, caplog
) -> None:
    """A missing collection (the real edge backend failing) -> 200, degraded: a shopper gets
    the other sources' items (nothing bought), a new visitor the popular source's best sellers.
    Each degraded request logs one line, not a traceback (once ~4 KB per request)."""
    recommender = client.app.state.recommender
    s = pipeline_settings
    missing = open_vector_store(s.vector_store, s.home, collection="missing")
    monkeypatch.setattr(recommender, "vectors", missing)
    with caplog.at_level("WARNING"):
        response = client.get(f"/users/{user}/recommendations", params={"k": 10})
    assert response.status_code == 200
    degraded = [r for r in caplog.records if "two_tower candidates failed" in r.getMessage()]
    assert len(degraded) == 1 and degraded[0].exc_info is None
    assert len(degraded[0].getMessage()) < 500
    body = response.json()
    assert body["degraded"] is True and body["fallback"] is False and len(body["items"]) == 10
    bought = set(recommender.user_features(user)["purchased_items"])
    assert not bought & {i["item_id"] for i in body["items"]}
    assert all(i["sources"] and "two_tower" not in i["sources"] for i in body["items"])
    # nothing known about a new visitor: exactly the popular source's candidates
    popular = recommender.pipeline.generator.source("popular")
    best_sellers = {i for i, _ in popular.table.top(popular.cfg.k, window=popular.cfg.window)}
    new = client.get("/users/somebody-new/recommendations", params={"k": 10}).json()
    assert len(new["items"]) == 10 and new["fallback"] is True
    assert all(i["sources"] == ["popular"] for i in new["items"])
    assert {i["item_id"] for i in new["items"]} <= best_sellers
    assert client.get("/health").status_code == 503
    monkeypatch.undo()
    assert client.get("/health").status_code == 200
