"""Shared fixtures: the whole pipeline, run once per session through the real CLI.

Every test is either ``unit`` (in-process, small data, seconds: ``make test-fast``) or ``e2e``
(the real CLI, Ray, servers or other processes). A test is ``e2e`` when it says so
(``@pytest.mark.e2e``) or uses a fixture of :data:`E2E_FIXTURES`; the rest are marked
``unit`` here. ``make test`` runs both.

The data roots that many end-to-end tests share (:data:`PREBUILT`) are built by the real CLI in
a background thread from the moment collection ends, while the tests that do not need them run
first; their fixtures then wait for the build. The CLI runs in child processes, so the build
uses the second core that the mostly single-threaded test process leaves idle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.core.schema import ITEM_NUMERIC, USER_NUMERIC
from recsys.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RECSYS = Path(sys.executable).with_name("recsys")

#: Fixtures that run the whole pipeline or a real Ray job: a test using one is end-to-end.
E2E_FIXTURES = frozenset({"pipeline_home", "click_home", "planted", "ray_run", "live_home"})

# Small but structured: enough purchases for a held-out week, fast enough for CI on 2 cores.
E2E_SIZE = {"users": 800, "items": 300, "days": 40}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        heavy = E2E_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("e2e") is None and heavy:
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the shared data roots that the selected tests need (after ``-m`` and
    ``-k`` deselection, so ``make test-fast`` builds none) and run the modules that need none
    of them first. Modules stay whole, so module fixtures are set up once."""
    if session.config.option.collectonly:
        return
    items = session.items
    needs = PREBUILT.keys() & {n for item in items for n in getattr(item, "fixturenames", ())}
    for name in sorted(needs):
        _BUILDS[name] = Build(name, PREBUILT[name], _temp_root(session.config, name))
    late = {item.module for item in items if needs & set(getattr(item, "fixturenames", ()))}
    items.sort(key=lambda item: getattr(item, "module", None) in late)  # stable: file order kept


class Build:
    """One shared data root built by the CLI in a background thread; :meth:`result` waits."""

    def __init__(self, name: str, build: Callable[[Path], Any], home: Path) -> None:
        self.name, self.home = name, home
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        self.thread.start()

    def _run(self, build: Callable[[Path], Any]) -> None:
        try:
            self.value = build(self.home)
        except BaseException as exc:  # re-raised in every test that asks for the root
            self.error = exc

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"building the shared data root {self.name!r} failed") from (
                self.error
            )
        return self.value


_BUILDS: dict[str, Build] = {}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the CLI of builds still running (a run stopped early by ``-x`` or Ctrl-C)."""
    import psutil

    running = [b.home for b in _BUILDS.values() if b.thread.is_alive()]
    for proc in psutil.Process().children(recursive=True) if running else []:
        try:
            home = proc.environ().get("RECSYS_HOME", "")
            if any(home.startswith(str(root)) for root in running):
                proc.kill()
        except psutil.Error:
            pass


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        RECSYS_HOME=str(home),
        RECSYS_RAY__OBJECT_STORE_MEMORY=str(256 * 1024 * 1024),
        FEAST_USAGE="False",
        **extra,
    )
    return env


def run_cli(
    home: Path, *args: str, check: bool = True, **extra: str
) -> subprocess.CompletedProcess:
    """Run the real ``recsys`` console script, as a user would."""
    proc = subprocess.run(
        [str(RECSYS), *args],
        env=cli_env(home, **extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"recsys {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc


def build_pipeline_home(home: Path) -> tuple[Path, str]:
    """Every stage of ``recsys demo --no-serve`` on a tiny generated shop: (data root, output).
    Through Ray (Ray Data, Ray Train) as on a cluster: the other pipelines here run in-process,
    as one machine does by default."""
    size = [f"--{k}={v}" for k, v in E2E_SIZE.items()]
    proc = run_cli(home, "demo", "--no-serve", *size, RECSYS_RAY__USE="always")
    # not a demo stage, but served as the session neighbours of runs without a session pipeline
    run_cli(home, "item2vec", RECSYS_RAY__USE="always")
    return home, proc.stdout + proc.stderr  # as a user sees it, piped: both streams


def build_click_home(home: Path) -> tuple[Path, dict[str, str]]:
    """Every stage on a click-only shop (views only): (data root, each stage's output)."""
    size = [f"--{k}={v}" for k, v in E2E_SIZE.items()]
    out = {}
    for stage in (["data", "synth", "--events", "view", *size], ["validate"], ["features"],
                  ["materialize"], ["train"], ["index"]):  # fmt: skip
        out[stage[0]] = run_cli(home, *stage).stdout
    return home, out


#: Shared data roots built in the background from the start of the session (fixture -> build).
PREBUILT: dict[str, Callable[[Path], Any]] = {
    "pipeline_home": build_pipeline_home,
    "click_home": build_click_home,
}


def _temp_root(config: pytest.Config, name: str) -> Path:
    """A fresh folder under the session's base temp (kept for the last runs, as tmp_path is);
    the hooks that start the builds run before any fixture could hand out tmp_path_factory."""
    return config._tmp_path_factory.mktemp(name)  # type: ignore[attr-defined]


def _prebuilt(request: pytest.FixtureRequest, name: str) -> Any:
    """The background build of ``name`` (started at collection; started now if it was not)."""
    if name not in _BUILDS:
        _BUILDS[name] = Build(name, PREBUILT[name], _temp_root(request.config, name))
    return _BUILDS[name].result()


@pytest.fixture(scope="session")
def pipeline_home(request: pytest.FixtureRequest) -> tuple[Path, str]:
    """See :func:`build_pipeline_home`."""
    return _prebuilt(request, "pipeline_home")


@pytest.fixture(scope="session")
def click_home(request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    """See :func:`build_click_home`."""
    return _prebuilt(request, "click_home")


@pytest.fixture(scope="session")
def pipeline_settings(pipeline_home: tuple[Path, str]) -> Settings:
    return Settings(home=pipeline_home[0])


def copy_home(home: Path, to: Path) -> Path:
    """A private copy of a data root (what serving needs), for a test that damages things.
    Not the edge store's ``.readers``: other processes' private copies, which their owners
    (or a stale-reader sweep) may delete while the tree is being copied."""
    skip = shutil.ignore_patterns("ray_results", "reports", "cache", ".readers")
    return Path(shutil.copytree(home, to, ignore=skip))


@pytest.fixture
def live_home(pipeline_home: tuple[Path, str], tmp_path: Path) -> Path:
    return copy_home(pipeline_home[0], tmp_path / "home")


class LiveApi:
    """``recsys serve`` in a child process on loopback, as a shop would run it."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home, self.env = home, env
        self.proc: subprocess.Popen | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> LiveApi:
        self.log = open(self.home / f"serve-{time.time_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(RECSYS), "serve", "--port", str(self.port)],
            env=cli_env(self.home, **self.env), cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"recsys serve exited {self.proc.returncode}: {self.logs()}")
            try:
                self.request("GET", "/health")
                return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"recsys serve did not answer in {timeout} s: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of one request; HTTP errors are answers, not raised."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


# --------------------------------------------------------------------------- tiny tables
def tiny_catalog(n: int = 40) -> pd.DataFrame:
    """``n`` items with random attributes and demand features (item_attributes shape)."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "item_id": [f"i{i:03d}" for i in range(n)],
            "category": rng.choice(["tops", "bottoms"], n),
            "colour": rng.choice(["red", "blue", "black"], n),
            "department": "womenswear",
            "style": rng.choice(["casual", "classic"], n),
            "product_type": "shirt",
            "price": rng.uniform(5, 100, n),
            **{c: rng.integers(0, 20, n) for c in ITEM_NUMERIC},
        }
    )


def tiny_users(catalog: pd.DataFrame, n: int = 30) -> pd.DataFrame:
    """``n`` Feast user rows over ``catalog``: one without history, one with a missing value."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({c: rng.integers(0, 50, n).astype(float) for c in USER_NUMERIC})
    frame["user_id"] = [f"u{i}" for i in range(n)]
    frame["purchased_items"] = [list(rng.choice(catalog["item_id"], 3)) for _ in range(n)]
    frame.loc[0, "purchased_items"] = None  # a user with no history yet
    frame.loc[1, "views_total"] = np.nan  # a missing feature
    return frame
