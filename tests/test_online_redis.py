"""Feast's Redis online store, the one a shop moves to past one machine (RECSYS_FEAST__*).

A real ``redis-server`` (Debian's package: ``make redis``, which ``make test`` runs first) is
started on a free loopback port with a password and no persistence for this module, and
stopped after it. The tests materialize the demo shop's features into it, check that every
online read equals the SQLite store's for the same entities, push an event through the API and
read it back from Redis, and serve recommendations with Redis behind the API.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from recsys.core.feast_store import open_store, redis_connection_string, resolved_yaml
from recsys.core.schema import table_path
from recsys.core.settings import FeastSettings, Settings
from tests.conftest import LiveApi, copy_home, run_cli

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MISSING = (
    "the Redis online store tests start Debian's redis-server: install it with `make redis` "
    "(what `make test` runs first), i.e. `apt-get install -y redis-server`"
)
#: The entities whose every online view the two stores must agree on.
KEYS = {"users": "user_id", "items": "item_id"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A password-protected redis-server on a free loopback port, for this module only."""
    if not Path(REDIS_SERVER).exists():
        pytest.fail(MISSING)
    folder = tmp_path_factory.mktemp("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = secrets.token_hex(16)
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=(folder / "redis.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert server.poll() is None, (folder / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not answer in 20 s"
            time.sleep(0.1)
    yield f"redis://:{password}@127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_home(pipeline_home, redis_url: str, tmp_path_factory) -> Path:
    """A copy of the demo shop's data root, materialized into Redis by the real CLI."""
    home = copy_home(pipeline_home[0], tmp_path_factory.mktemp("redis_home") / "home")
    run_cli(home, "materialize", **redis_env(redis_url))
    return home


def redis_env(url: str) -> dict[str, str]:
    return {"RECSYS_FEAST__ONLINE_STORE": "redis", "RECSYS_FEAST__REDIS_URL": url}


def redis_settings(home: Path, url: str) -> Settings:
    return Settings(home=home, feast=FeastSettings(online_store="redis", redis_url=url))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390", "127.0.0.1:6390"),
        ("redis://:s3cret@cache.internal/2", "cache.internal:6379,db=2,password=s3cret"),
        ("rediss://app:p%40ss@r.example:6380/0",
         "r.example:6380,db=0,username=app,password=p@ss,ssl=true"),
        ("redis1:6379,password=x,ssl=true", "redis1:6379,password=x,ssl=true"),  # Feast's form
    ],
)  # fmt: skip
def test_redis_urls_become_feasts_connection_string(url: str, expected: str) -> None:
    settings = redis_settings(Path("/tmp/unused"), url)
    assert redis_connection_string(settings) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "message"),
    [("http://cache:6379", "not a redis:// or rediss:// URL"), ("redis://[::1]:6379", "IPv6"),
     ("redis://:a,b@cache:6379", "',' or '$'"), ("redis://cache/zero", "not a number")],
)  # fmt: skip
def test_a_redis_url_feast_cannot_take_is_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="RECSYS_FEAST__REDIS_URL") as error:
        redis_connection_string(redis_settings(Path("/tmp/unused"), url))
    assert message in str(error.value)


@pytest.mark.unit
def test_the_rendered_repo_config_names_redis_and_is_private(tmp_path: Path) -> None:
    settings = redis_settings(tmp_path, "redis://:pw@127.0.0.1:6390/1")
    settings.feast.redis_key_ttl_seconds = 86_400
    path = resolved_yaml(settings)
    text = path.read_text()
    assert "type: redis" in text and "127.0.0.1:6390,db=1,password=pw" in text
    assert "key_ttl_seconds: 86400" in text and "online_store.db" not in text
    assert path.stat().st_mode & 0o077 == 0, "a file holding the password is the owner's only"
    sqlite = resolved_yaml(Settings(home=tmp_path))
    assert "type: sqlite" in sqlite.read_text() and "password" not in sqlite.read_text()
    without_url = Settings(home=tmp_path, feast=FeastSettings(online_store="redis"))
    with pytest.raises(ValueError, match="RECSYS_FEAST__REDIS_URL"):
        resolved_yaml(without_url)


def _online_rows(store, key: str, ids: list[str]) -> pd.DataFrame:
    """Every feature of every view keyed by ``key``, for ``ids``."""
    features = [f"{view.name}:{field.name}" for view in store.list_feature_views()
                if key in view.join_keys for field in view.features]  # fmt: skip
    assert features, f"no feature view is keyed by {key}"
    rows = store.get_online_features(features=features, entity_rows=[{key: i} for i in ids])
    return rows.to_df().sort_values(key).reset_index(drop=True)


def test_redis_serves_the_same_rows_as_sqlite(pipeline_home, redis_home, redis_url) -> None:
    """Every feature of every view, for a sample of users and items and an unknown id."""
    sqlite = open_store(Settings(home=pipeline_home[0]))
    redis = open_store(redis_settings(redis_home, redis_url))
    assert redis.config.online_store.type == "redis"
    validated = Settings(home=pipeline_home[0]).validated_dir
    for table, key in KEYS.items():
        ids = pd.read_parquet(table_path(validated, table))[key].astype(str)
        sample = sorted(ids.sample(60, random_state=3)) + ["__nobody__"]
        expected = _online_rows(sqlite, key, sample)
        got = _online_rows(redis, key, sample)
        assert expected.drop(columns=key).notna().any().any(), f"{table}: SQLite has no rows"
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, obj=table)
    assert (redis_home / "feast" / "materialized_into.txt").read_text().startswith("redis:")


def test_the_api_serves_from_redis_and_writes_events_to_it(redis_home, redis_url) -> None:
    """The recommendation path with Redis behind it, and a pushed event read back from Redis
    by a fresh store (not the API's process)."""
    settings = Settings(home=redis_home)
    buys = pd.read_parquet(table_path(settings.validated_dir, "interactions"))
    buys = buys[buys["event_type"] == "purchase"]
    user = str(buys["user_id"].value_counts().index[0])
    item = str(buys[buys["user_id"] != user]["item_id"].iloc[0])
    api = LiveApi(redis_home, **redis_env(redis_url)).start()
    try:
        status, health = api.request("GET", "/health")
        assert status == 200 and health["feature_store"]["online_store"] == "redis", health
        status, body = api.request("GET", f"/users/{user}/recommendations")
        assert status == 200 and len(body["items"]) == 10, body
        assert body["fallback"] is False, "the user's row was read from Redis"
        event = {"user_id": user, "item_id": item, "event_type": "view", "event_id": "redis-1"}
        status, accepted = api.request("POST", "/events", {"events": [event]})
        assert status == 200, accepted
    finally:
        api.stop()
    store = open_store(redis_settings(redis_home, redis_url))
    row = store.get_online_features(
        features=["user_activity:recent_views"], entity_rows=[{"user_id": user}]
    ).to_dict()
    assert item in row["recent_views"][0], row
