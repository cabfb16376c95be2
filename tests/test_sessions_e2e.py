"""A shop that only sees clicks, end to end: every stage, personal answers, session answers.

``click_home`` runs the real CLI on a generated shop whose interactions are views only (no
cart, no order): the platform must take its signal from views, fit the session pipeline and
answer known users and anonymous visits from behaviour, not from a popularity fallback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recsys.core.run import Run
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from serving.app import create_app
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e
PERSONAL = {"sr", "vsknn", "slist", "cooccurrence", "item_item", "two_tower"}


@pytest.fixture(scope="module")
def client(click_home) -> TestClient:
    with TestClient(create_app(Settings(home=click_home[0]))) as c:
        yield c


@pytest.fixture(scope="module")
def views(click_home) -> pd.DataFrame:
    return pd.read_parquet(table_path(Settings(home=click_home[0]).validated_dir, "interactions"))


def test_a_click_only_shop_trains_on_views_and_fits_the_session_pipeline(click_home) -> None:
    home, out = click_home
    assert "histories of view events" in out["features"], out["features"]
    assert "learn from views" in out["train"], out["train"]
    run = Run.current(Settings(home=home).artifacts_dir)
    assert run.manifest["data"]["signal"] == "view"
    sessions = run.manifest["sessions"]
    assert sessions is not None and {"sr", "vsknn", "slist"} <= set(sessions["sources"])
    assert sessions["rows"]["label_in_candidates"] > 0.3, sessions["rows"]
    # the user pipeline learnt from views too: its two-tower beats popularity on held-out views
    m = run.manifest["metrics"]
    assert m["two_tower"]["recall@10"] > max(m["popularity"]["recall@10"],
                                             m["popularity_recent"]["recall@10"]), m  # fmt: skip


def test_known_users_get_personal_recommendations(client, views) -> None:
    """Two shoppers with different histories get different lists from behavioural sources."""
    active = views["user_id"].value_counts().index[:2].tolist()
    answers = [client.get(f"/users/{u}/recommendations", params={"k": 10}).json() for u in active]
    for body in answers:
        assert not body["fallback"] and len(body["items"]) == 10, body
        assert any(PERSONAL & set(i["sources"]) for i in body["items"]), body
    lists = [[i["item_id"] for i in body["items"]] for body in answers]
    assert lists[0] != lists[1]


def test_a_visit_gets_session_recommendations(client, views) -> None:
    """An anonymous visit is answered by the session sources and their ranker."""
    session = views.sort_values("timestamp").groupby("session_id")["item_id"].agg(list)
    browsed = next(s for s in session if len(set(s)) >= 3)[:3][::-1]  # newest first
    body = client.post("/recommendations", json={"session_items": browsed, "k": 10}).json()
    assert not body["fallback"] and len(body["items"]) == 10, body
    sources = {s for item in body["items"] for s in item["sources"]}
    assert sources & {"sr", "vsknn", "slist", "cooccurrence"}, body
    assert not set(browsed) & {i["item_id"] for i in body["items"]}  # hidden by default
    shown = {"session_items": browsed, "k": 10, "hide_seen": False}
    again = client.post("/recommendations", json=shown).json()
    assert len(again["items"]) == 10
    assert any(r.startswith(("often viewed after", "viewed in sessions like yours", "goes with",
                             "viewed together with"))
               for item in body["items"] for r in item["reasons"]), body  # fmt: skip


def test_posting_views_changes_a_known_users_next_recommendations(client, views) -> None:
    user = views["user_id"].value_counts().index[0]
    before = [i["item_id"] for i in client.get(f"/users/{user}/recommendations").json()["items"]]
    seen = set(views.loc[views["user_id"] == user, "item_id"])
    fresh = [i for i in views["item_id"].value_counts().index if i not in seen][20:23]
    started = time.monotonic()
    events = [{"user_id": user, "item_id": item, "event_type": "view"} for item in fresh]
    assert client.post("/events", json={"events": events}).status_code == 200
    after = client.get(f"/users/{user}/recommendations").json()
    took = time.monotonic() - started
    assert took < 1.0, took
    ids = [i["item_id"] for i in after["items"]]
    assert ids != before and not set(fresh) & set(ids)  # steered by the visit, which is hidden
    session = client.post("/recommendations", json={"user_id": user, "k": 10}).json()
    assert not session["fallback"] and len(session["items"]) == 10, session


def test_evaluate_next_item_scores_the_served_session_pipeline_against_the_peers(
    click_home, tmp_path: Path
) -> None:
    home, _ = click_home
    out = tmp_path / "next_item.json"
    stdout = run_cli(home, "evaluate", "--task", "next-item", "--no-tune", "--json",
                     str(out)).stdout  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"popularity", "cooccurrence", "sr", "vsknn"}, stdout
    served = result["served"]
    assert {"sr", "vsknn", "slist"} <= set(served["sources_alone"])
    assert result["dataset"]["events"] > 100
    assert served["mrr@20"] > 2 * result["models"]["popularity"]["mrr@20"], stdout
    assert "served session pipeline" in stdout
