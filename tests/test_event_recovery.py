"""Events against a live API that is killed, and an online store that is damaged (#14).

Each test serves a private copy of the pipeline's data root with ``recsys serve`` in a child
process, and reads the online store back through Feast as a separate process would.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from recsys.core.feast_store import open_store
from recsys.core.settings import Settings
from tests.conftest import LiveApi

pytestmark = pytest.mark.e2e


def _activity(home: Path, users: list[str]) -> dict[str, dict]:
    """Each user's online activity row, read as another process would."""
    names = ("recent_views", "recent_purchases", "session_events", "applied_seq")
    rows = (
        open_store(Settings(home=home))
        .get_online_features(
            features=[f"user_activity:{n}" for n in names],
            entity_rows=[{"user_id": u} for u in users],
        )
        .to_dict()
    )
    return {u: {n: rows[n][i] for n in names} for i, u in enumerate(rows["user_id"])}


def _logged(home: Path, prefix: str) -> list[dict]:
    """Logged events whose event_id starts with ``prefix`` (the copied data root may hold
    other tests' events)."""
    lines = []
    for path in sorted((home / "events").glob("events*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if str(r.get("event_id")).startswith(prefix)]


def _items(api: LiveApi, n: int) -> list[str]:
    status, body = api.request("GET", f"/popular?window=all&k={n}")
    assert status == 200, body
    return [i["item_id"] for i in body["items"]]


def test_acknowledged_events_survive_sigkill_and_apply_once(live_home: Path) -> None:
    """SIGKILL in the middle of a burst from 4 clients; after a restart every acknowledged event
    is logged once and in the online store once, and retrying every event (acknowledged or
    not, with its event_id) leaves each applied exactly once."""
    api = LiveApi(live_home).start()
    items = _items(api, 20)
    users = [f"kill-{u}" for u in range(6)]
    events = [
        {"event_id": f"burst-{n}", "user_id": users[n % len(users)], "item_id": items[n % 20],
         "event_type": "purchase" if n % 5 == 0 else "view"}
        for n in range(1200)
    ]  # fmt: skip
    batches = [events[i : i + 10] for i in range(0, len(events), 10)]
    acknowledged: list[str] = []
    lock, next_batch = threading.Lock(), iter(range(len(batches)))

    def client() -> None:
        while True:
            with lock:
                b = next(next_batch, None)
            if b is None:
                return
            try:
                status, _ = api.request("POST", "/events", {"events": batches[b]})
            except OSError:  # the server is gone
                return
            if status == 200:
                with lock:
                    acknowledged.extend(e["event_id"] for e in batches[b])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    while len(acknowledged) < 300:
        time.sleep(0.01)
    api.kill()
    for t in threads:
        t.join(60)
    assert 300 <= len(acknowledged) < len(events), "the kill came too late to test anything"

    api = LiveApi(live_home).start()  # replays what the crash left logged but not applied
    try:
        logged = Counter(r["event_id"] for r in _logged(live_home, "burst-"))
        assert set(acknowledged) <= set(logged), "an acknowledged event was lost"
        assert max(logged.values()) == 1, "an event was logged twice"
        before = _activity(live_home, users)
        for user in users:  # the row holds exactly the logged events of that user
            mine = [r for r in _logged(live_home, "burst-") if r["user_id"] == user]
            assert before[user]["session_events"] == len(mine), user

        for batch in batches:  # the client retries everything, acknowledged or not
            status, body = api.request("POST", "/events", {"events": batch})
            assert status == 200, body
        logged = Counter(r["event_id"] for r in _logged(live_home, "burst-"))
        assert sorted(logged) == sorted(e["event_id"] for e in events)
        assert set(logged.values()) == {1}
        after = _activity(live_home, users)
        for user in users:
            assert after[user]["session_events"] == len(events) // len(users), user
            bought = {e["item_id"] for e in events if e["user_id"] == user and e["event_id"]
                      and e["event_type"] == "purchase"}  # fmt: skip
            assert set(after[user]["recent_purchases"]) <= bought
    finally:
        api.stop()


def _wait_health(api: LiveApi, status: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got, body = api.request("GET", "/health")
        if got == status or time.monotonic() > deadline:
            assert got == status, {k: v for k, v in body.items() if k != "model"}
            return body
        time.sleep(0.2)


def _event(n: int, user: str, item: str) -> dict:
    return {"events": [{"event_id": f"heal-{n}", "user_id": user, "item_id": item,
                        "event_type": "purchase"}]}  # fmt: skip


@pytest.mark.parametrize("damage", ["truncate", "move"])
def test_a_damaged_online_store_heals_without_a_restart(live_home: Path, damage: str) -> None:
    """Truncate the SQLite online store (or move it away): /health says 503 and events are
    refused with 503 but logged; restore it byte-identical: /health is 200 again within
    seconds, and the event posted during the outage is in the store, once."""
    api = LiveApi(live_home).start()
    try:
        db = live_home / "feast" / "online_store.db"
        item = _items(api, 1)[0]
        assert _wait_health(api, 200)["feature_store"]["ok"]
        saved = db.read_bytes()
        if damage == "truncate":
            os.truncate(db, 0)
        else:
            db.rename(db.with_suffix(".moved"))
        body = _wait_health(api, 503)
        assert body["feature_store"]["ok"] is False and body["feature_store"]["error"]
        status, answer = api.request("POST", "/events", _event(1, "heal-user", item))
        assert status == 503 and "logged" in answer["detail"], answer
        status, _ = api.request("GET", "/users/heal-user/recommendations")
        assert status == 200  # recommendations go on, degraded

        if damage == "truncate":
            db.write_bytes(saved)
        else:
            db.with_suffix(".moved").rename(db)
        assert _wait_health(api, 200)["feature_store"]["ok"]
        row = _activity(live_home, ["heal-user"])["heal-user"]  # applied once the store answered
        assert row["session_events"] == 1 and row["recent_purchases"] == [item]
        status, answer = api.request("POST", "/events", _event(1, "heal-user", item))
        assert (status, answer) == (200, {"accepted": 1, "duplicates": 1})  # logged before
        assert _activity(live_home, ["heal-user"])["heal-user"] == row
    finally:
        api.stop()
