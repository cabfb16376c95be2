"""The real API with keys, limits and CORS configured (#14 item 7): who may write, how much."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from recsys.core.settings import ApiKey, Settings
from serving.app import create_app
from serving.security import hash_key, new_key

pytestmark = pytest.mark.e2e

WRITER, _ = new_key()
DASHBOARD, _ = new_key()
SHOP = "https://shop.example"


@pytest.fixture(scope="module")
def guarded(pipeline_settings: Settings) -> TestClient:
    settings = pipeline_settings.model_copy(deep=True)
    settings.serve.api_keys = {
        "shop-backend": ApiKey(sha256=hash_key(WRITER)),
        "dashboard": ApiKey(sha256=hash_key(DASHBOARD), scopes=frozenset({"read", "admin"})),
    }
    settings.serve.write_rate_per_s = 3.0
    settings.serve.cors_origins = [SHOP]
    with TestClient(create_app(settings)) as client:
        yield client


def _event(client: TestClient, user: str = "limits-user") -> dict:
    item = client.app.state.recommender.items.item_ids[5]
    return {"events": [{"user_id": user, "item_id": item, "event_type": "view"}]}


def test_writes_and_metrics_need_a_key_with_the_scope_reads_do_not(guarded) -> None:
    body = _event(guarded)
    assert guarded.post("/events", json=body).status_code == 401
    assert guarded.post("/events", json=body, headers={"X-API-Key": "rk_nope"}).status_code == 401
    denied = guarded.post("/events", json=body, headers={"X-API-Key": DASHBOARD})
    assert denied.status_code == 403 and "'write' scope" in denied.json()["detail"]
    ok = guarded.post("/events", json=body, headers={"Authorization": f"Bearer {WRITER}"})
    assert ok.status_code == 200
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"X-API-Key": WRITER}).status_code == 403
    assert guarded.get("/metrics", headers={"X-API-Key": DASHBOARD}).status_code == 200
    assert guarded.get("/users/limits-user/recommendations").status_code == 200
    assert guarded.get("/health").status_code in (200, 503)  # probes need no key


def test_oversized_bodies_and_fields_are_refused(guarded) -> None:
    headers = {"X-API-Key": WRITER}
    huge = _event(guarded)
    huge["events"][0]["session_id"] = "s" * 10_000_000  # once accepted and fsynced
    assert guarded.post("/events", json=huge, headers=headers).status_code == 413
    long = _event(guarded)
    long["events"][0]["session_id"] = "s" * 300
    response = guarded.post("/events", json=long, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "session_id"
    session = {"session_items": ["x" * 300]}
    response = guarded.post("/recommendations", json=session)
    assert response.status_code == 422 and "session_items" in response.json()["detail"][0]["loc"]


def test_cors_answers_only_the_configured_origins(guarded) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = guarded.options("/events", headers={"Origin": SHOP, **preflight})
    assert ok.headers["access-control-allow-origin"] == SHOP
    other = guarded.options("/events", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_the_openapi_schema_documents_the_guards(guarded) -> None:
    schema = guarded.get("/openapi.json").json()
    events = schema["paths"]["/events"]["post"]
    assert {"401", "403", "404", "413", "422", "429", "503"} <= set(events["responses"])
    assert events["security"]  # the key schemes are declared
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])


def test_writes_are_rate_limited_per_key(guarded) -> None:
    """Last in the module: it spends the key's budget."""
    headers = {"X-API-Key": WRITER}
    codes = [guarded.post("/events", json=_event(guarded), headers=headers).status_code
             for _ in range(12)]  # fmt: skip
    assert 200 in codes and 429 in codes
    limited = guarded.post("/events", json=_event(guarded), headers=headers)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
