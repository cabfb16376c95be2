"""Ranking metrics (``models/metrics.py``) and the API's Prometheus metrics
(``serving/metrics.py``), one worker and several."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models import metrics
from models.popularity import recommend_popular
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from serving.metrics import MULTIPROC_ENV, ApiMetrics, worker_metrics_dir
from tests.conftest import REPO, LiveApi

T = TypeVar("T")


@pytest.mark.parametrize(
    "name, ranked, relevant, k, expected",
    [
        ("recall", ["a", "b", "c"], {"a", "c"}, 3, 1.0),
        ("recall", ["a", "b", "c"], {"a", "z"}, 3, 0.5),
        # 3 relevant, k=2, one hit in the top 2 -> 1 / min(2, 3)
        ("recall", ["a", "b", "c"], {"b", "c", "d"}, 2, 0.5),
        # hit at rank 2 of 3, one relevant: (1/log2(3)) / (1/log2(2))
        ("ndcg", ["x", "a", "y"], {"a"}, 3, 1 / math.log2(3)),
        # hits at ranks 1 and 3, two relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
        ("ndcg", ["a", "x", "b"], {"a", "b"}, 3, (1 + 1 / 2) / (1 + 1 / math.log2(3))),
        ("ndcg", ["x", "y"], {"a"}, 2, 0.0),
        # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / min(3, 2)
        ("map", ["a", "x", "b"], {"a", "b"}, 3, (1 + 2 / 3) / 2),
        # one hit at rank 2, 3 relevant, k=2: (1/2) / min(2, 3)
        ("map", ["x", "a", "b"], {"a", "c", "d"}, 2, 0.25),
        ("map", ["x"], {"a"}, 1, 0.0),
        ("hit_rate", ["x", "a"], {"a"}, 2, 1.0),
        ("hit_rate", ["x", "a"], {"a"}, 1, 0.0),
    ],
)
def test_per_user_metrics_by_hand(name, ranked, relevant, k, expected) -> None:
    metric = getattr(metrics, f"{name}_at_k")
    assert metric(ranked, relevant, k) == pytest.approx(expected)
    with pytest.raises(ValueError):  # undefined for a user without relevant items
        metric(ranked, set(), k)


def test_evaluate_rankings_averages_users_and_counts_missing_as_miss() -> None:
    truth = {"u1": {"a"}, "u2": {"b"}, "u3": set()}
    out = metrics.evaluate_rankings({"u1": ["a", "x"]}, truth, k=2)
    assert out["users"] == 2
    assert out["recall@2"] == pytest.approx(0.5)


def test_recommend_popular_skips_what_each_user_bought() -> None:
    ranking = ["a", "b", "c", "d"]
    out = recommend_popular(ranking, {"u1": {"a", "c"}}, ["u1", "u2"], 2)
    assert out == {"u1": ["b", "d"], "u2": ["a", "b"]}


def test_coverage_by_hand() -> None:
    rankings = {"u1": ["a", "b", "c"], "u2": ["a", "d", "e"]}
    assert metrics.catalog_coverage(rankings, 10, 2) == pytest.approx(3 / 10)  # a, b, d
    assert metrics.catalog_coverage(rankings, 10, 3) == pytest.approx(5 / 10)


def test_evaluate_all_matches_the_per_user_functions() -> None:
    truth = {"u1": {"a", "b"}, "u2": {"z"}, "u3": set(), "u4": {"c"}}
    rankings = {"u1": ["a", "x", "b", "y"], "u2": ["x", "y", "z", "w"]}  # u4: no ranking
    out = metrics.evaluate_all(rankings, truth, ks=(2, 4), map_ks=(3,), n_items=8)
    assert out["users"] == 3
    assert set(out) >= {"recall@2", "ndcg@4", "map@2", "map@3", "map@4", "hit@2", "coverage@4"}
    assert out["recall@2"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert out["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["hit@2"] == pytest.approx(1 / 3)
    expected_ndcg = ((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)) + 1 / math.log2(4)) / 3
    assert out["ndcg@4"] == pytest.approx(expected_ndcg)
    expected_map = (metrics.map_at_k(rankings["u1"], truth["u1"], 3) + 1 / 3) / 3
    assert out["map@3"] == pytest.approx(expected_map)
    assert out["coverage@2"] == pytest.approx(3 / 8)  # a, x, y over the evaluated users


# --------------------------------------------------------------------------- API metrics
def _requests(text: str, endpoint: str) -> float:
    """The request count of one endpoint in a Prometheus scrape, every method and status."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "recsys_requests_total" and sample.labels["endpoint"] == endpoint
    )


def test_one_process_counts_in_each_apps_own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a multiprocess directory (one worker, the in-process tests) nothing changes:
    each app has its registry, and two apps in one process never add up."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    first, second = ApiMetrics(), ApiMetrics()
    assert not first.multiprocess
    first.requests.labels("/popular", "GET", "200").inc(3)
    second.requests.labels("/popular", "GET", "200").inc()
    assert _requests(generate_latest(first.registry).decode(), "/popular") == 3
    assert _requests(generate_latest(second.registry).decode(), "/popular") == 1


#: A worker process: counts argv[1] /popular requests, prints its /metrics.
_WORKER = """
import sys
from prometheus_client import generate_latest
from serving.metrics import ApiMetrics
metrics = ApiMetrics()
assert metrics.multiprocess
metrics.requests.labels("/popular", "GET", "200").inc(int(sys.argv[1]))
print(generate_latest(metrics.registry).decode())
"""


@pytest.mark.e2e
def test_worker_metrics_dir_adds_up_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes started inside ``worker_metrics_dir`` count into its files and any process's
    ``/metrics`` registry sums them; the directory is fresh, removed after, and one that a
    killed server left behind goes at the next start."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv(MULTIPROC_ENV, "/somewhere/else")  # inherited: replaced, then restored
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = tmp_path / f"recsys-metrics-{int(dead.stdout)}-x"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"")
    with worker_metrics_dir() as directory:
        assert not orphan.exists() and not any(directory.iterdir())
        assert os.environ[MULTIPROC_ENV] == str(directory)
        scrapes = [
            subprocess.run([sys.executable, "-c", _WORKER, str(n)], cwd=REPO, env=dict(os.environ),
                           capture_output=True, text=True, check=True, timeout=60).stdout
            for n in (2, 5)
        ]  # fmt: skip
        assert [_requests(text, "/popular") for text in scrapes] == [2, 7]  # the first, then both
        assert len(list(directory.glob("counter_*.db"))) == 2  # one file per process
    assert not directory.exists()
    assert os.environ[MULTIPROC_ENV] == "/somewhere/else"


def _on_one_worker(api: LiveApi, then: Callable[[httpx.Client], T]) -> tuple[int, T]:
    """(worker pid, what ``then`` returns) of requests on one keep-alive connection: it
    stays with one worker, which ``/health`` names before and after."""
    with httpx.Client(base_url=api.url, timeout=30) as http:
        pid = http.get("/health").json()["worker_pid"]
        result = then(http)
        assert http.get("/health").json()["worker_pid"] == pid
    return pid, result


def _on_both_workers(api: LiveApi, then: Callable[[httpx.Client], T]) -> dict[int, list[T]]:
    """``then`` on parallel fresh connections until both workers ran it (a worker that is
    still starting takes none): what it returned, by worker pid."""
    results: dict[int, list[T]] = {}
    deadline = time.monotonic() + 90
    while len(results) < 2 and time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:
            for pid, result in pool.map(lambda _: _on_one_worker(api, then), range(4)):
                results.setdefault(pid, []).append(result)
    assert len(results) == 2, f"one worker answered: {results}"
    return results


def _popular(http: httpx.Client) -> list[int]:
    """Five requests the test counts: their statuses."""
    return [http.get("/popular", params={"k": 3}).status_code for _ in range(5)]


def _scrape(http: httpx.Client) -> str:
    return http.get("/metrics").text


def _answers_every_endpoint(http: httpx.Client, home: Path) -> None:
    """A customer's recommendations (from a worker's own index copy), a session's, and every
    other read endpoint's status."""
    inter = pd.read_parquet(table_path(Settings(home=home).validated_dir, "interactions"))
    buys = inter[inter["event_type"] == "purchase"]
    counts = buys.groupby("user_id").size()
    user, item = str(counts[counts >= 3].index[0]), str(buys["item_id"].value_counts().index[0])
    for _ in range(3):  # on a busy machine a first answer may miss a stage budget
        body = http.get(f"/users/{user}/recommendations").json()
        if not body["degraded"]:
            break
    assert len(body["items"]) == 10 and body["degraded"] is False, body
    session = {"session_items": [item], "k": 3}
    assert len(http.post("/recommendations", json=session).json()["items"]) == 3
    statuses = {f"/items/{item}/similar": 200, f"/items/{item}/bought-together": 200,
                "/popular?window=30d": 200, "/items/nope/similar": 404}  # fmt: skip
    assert {path: http.get(path).status_code for path in statuses} == statuses


@pytest.mark.e2e
def test_metrics_count_every_worker_of_a_live_server(live_home: Path, tmp_path: Path) -> None:
    """``recsys serve --workers 2``, as a user starts it: whichever worker answers
    ``/metrics`` counts the requests that both served (each worker's own registry counted only
    its share); the workers' files live in a directory of the server's own, gone once it
    stops; and both workers answer every endpoint."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    api = LiveApi(live_home, RECSYS_SERVE__WORKERS="2", TMPDIR=str(tmp)).start()
    try:
        served = _on_both_workers(api, _popular)  # pid -> statuses of each batch it answered
        statuses = [status for batches in served.values() for batch in batches for status in batch]
        assert set(statuses) == {200}
        scraped = _on_both_workers(api, _scrape)
        counts = {pid: [_requests(text, "/popular") for text in texts]
                  for pid, texts in scraped.items()}  # fmt: skip
        assert all(n == len(statuses) for worker in counts.values() for n in worker), counts
        families = {family.name for texts in scraped.values()
                    for family in text_string_to_metric_families(texts[0])}  # fmt: skip
        assert {name.split("_")[0] for name in families} == {"recsys"}, families  # not Feast's
        [directory] = tmp.glob("recsys-metrics-*")
        writers = {int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("counter_*.db")}
        assert writers == set(served)  # each worker counted into a file of its own
        for _ in range(2):  # fresh connections: each worker answers, at random
            with httpx.Client(base_url=api.url, timeout=30) as http:
                _answers_every_endpoint(http, live_home)
    finally:
        api.stop()
    assert not list(tmp.glob("recsys-metrics-*"))
