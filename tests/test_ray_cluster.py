"""A real two-node Ray cluster on this machine: `recsys train` submitted to it as a job, and the
features and the materialization run on it.

Two ``ray start`` processes (a head and a worker node, each with 2 logical CPUs) form the
cluster; the test submits ``python -m recsys train --num-workers 2`` through the Jobs API with
the checkout as the job's working directory, as ``ray job submit --working-dir . -- ...`` does,
waits for it, and checks the run it wrote: the two-tower fit ran on Ray Train with two workers
on the two nodes, each sized from the cluster's CPUs (2 threads), not the driver machine's
(which would give 1 per worker). The data reaches the workers through the shared data root.

``recsys features --engine ray`` and the Ray materialization engine join the cluster through
``RAY_ADDRESS``, as a command run on a cluster node does: every feature table must equal the
one-process DuckDB run's, and every online row the one Feast's local engine loads.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipelines.features import ORDER
from recsys.core.run import Run
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from tests.conftest import REPO, cli_env, copy_home, run_cli

pytestmark = pytest.mark.e2e

RAY = Path(sys.executable).with_name("ray")
#: Logical CPUs per node: two workers of 2 threads fit only one per node.
NODE_CPUS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: Path) -> None:
    """Kill this cluster's processes (found by its temp dir) and their children, not every Ray
    on the machine as ``ray stop`` would (other tests may run a local Ray meanwhile)."""
    procs: set[psutil.Process] = set()
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in arg for arg in proc.info["cmdline"] or ()):
            procs.add(proc)
            procs.update(proc.children(recursive=True))
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs), timeout=20)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """(GCS address, dashboard URL, env) of a head and a worker node on loopback."""
    # short: Ray's Unix socket paths must stay under ~107 characters
    temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{RAY.parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    # set to 0 in this process by any earlier test's private local Ray (ensure_ray), where it
    # keeps Ray on loopback; inherited, it makes `ray start` refuse to form a cluster
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    gcs, dashboard = f"127.0.0.1:{_free_port()}", _free_port()
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={NODE_CPUS}",
              f"--object-store-memory={200 * 1024 * 1024}", "--disable-usage-stats"]  # fmt: skip
    head = [str(RAY), "start", "--head", f"--port={gcs.split(':')[1]}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={_free_port()}",  # not the fixed default 10001
            f"--temp-dir={temp_dir}", *common]  # fmt: skip
    worker = [str(RAY), "start", f"--address={gcs}", *common]
    try:
        for command in (head, worker):
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield {"gcs": gcs, "dashboard": f"http://127.0.0.1:{dashboard}", "temp_dir": str(temp_dir)}
    finally:
        _stop_cluster(temp_dir)


def _submit(client, timeout: float = 120.0, **job) -> str:
    """``client.submit_job(**job)``, retried while the head's job agent is still starting: the
    dashboard answers before its agent registers, and on a loaded machine a job submitted
    right after ``ray start`` gets "No available agent to submit job" (a 500) for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_recsys_train_as_a_job_on_two_nodes(cluster, pipeline_home, tmp_path) -> None:
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    home = copy_home(pipeline_home[0], tmp_path / "home")
    before = Run.current(Settings(home=home).artifacts_dir).id
    # The job's environment: what a user puts in --runtime-env-json (the data root, on storage
    # every node mounts; here the one machine's disk).
    env_vars = {k: v for k, v in cli_env(home).items() if k.startswith(("RECSYS_", "FEAST_"))}
    # the session pipeline's fits take the same fit_torch path; left out to keep the job short
    env_vars |= {"RECSYS_RAY__USE": "always", "RAY_AUTH_MODE": "disabled",
                 "RECSYS_SESSIONS__ENABLED": "false"}  # fmt: skip
    client = JobSubmissionClient(cluster["dashboard"])
    started = time.monotonic()
    job = _submit(
        client,
        entrypoint="python -m recsys train --num-workers 2 --epochs 1",
        runtime_env={
            "working_dir": str(REPO),
            "env_vars": env_vars,
            "excludes": ["/tests/", "/benchmarks/results/"],
        },
    )
    status = client.get_job_status(job)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() - started < 600, client.get_job_logs(job)[-4000:]
        time.sleep(2)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert "Ray Train, 2 worker(s)" in logs, logs[-3000:]

    run = Run.current(Settings(home=home).artifacts_dir)
    assert run.id != before, "the job wrote a new run and made it current"
    fit = run.manifest["metrics"]["fit"]
    assert fit["backend"] == "ray" and fit["workers"] == 2, fit
    assert fit["nodes"] == 2, f"the two workers shared one node: {fit}"
    # sized from the cluster (2 nodes x 2 CPUs / 2 workers), not the driver's os.cpu_count()
    assert fit["threads"] == NODE_CPUS, fit
    assert run.item_vectors().shape[0] > 1, "the run holds its item vectors"

    ray.shutdown()  # the test process itself never joined; the state API asks the dashboard
    from ray.util.state import list_nodes

    nodes = list_nodes(address=cluster["dashboard"], filters=[("state", "=", "ALIVE")])
    assert len(nodes) == 2, nodes


#: ``recsys materialize`` up to a given end, so that two runs load the same window; its log
#: lines (the Ray engine's "... written by N Ray tasks on M node(s)") on stderr.
MATERIALIZE = """
import logging, sys
from datetime import datetime
from pipelines.materialize import materialize
from recsys.core.settings import get_settings

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
logging.getLogger("recsys").setLevel(logging.INFO)
materialize(get_settings(), datetime.fromisoformat(sys.argv[1]))
"""


def _materialize(home: Path, end: datetime, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", MATERIALIZE, end.isoformat()], env=cli_env(home, **env), cwd=REPO,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stderr


def _online_rows(home: Path, key: str, ids: list[str]) -> pd.DataFrame:
    """Every feature of every view keyed by ``key``, for ``ids``, from ``home``'s online store."""
    from recsys.core.feast_store import open_store

    store = open_store(Settings(home=home))
    features = [f"{view.name}:{field.name}" for view in store.list_feature_views()
                if key in view.join_keys for field in view.features]  # fmt: skip
    rows = store.get_online_features(features=features, entity_rows=[{key: i} for i in ids])
    frame = rows.to_df().sort_values(key).reset_index(drop=True)
    return frame[sorted(frame.columns)]  # the views' order is the registry's, not fixed


def test_features_and_materialization_on_ray_equal_one_machine(
    cluster, pipeline_home, tmp_path
) -> None:
    """Features by entity shards on the two nodes equal the demo's DuckDB tables; materialized
    by Ray tasks, the online store serves what Feast's local engine loads from the same data."""
    demo = pipeline_home[0]
    local, on_ray = copy_home(demo, tmp_path / "local"), copy_home(demo, tmp_path / "ray")
    features = Settings(home=on_ray).features_dir
    for name in ORDER:  # the Ray run starts from nothing: a full run
        (features / f"{name}.parquet").unlink()
    (features / "_state.json").unlink()
    for home in (local, on_ray):  # both stores are loaded from empty (a new Feast folder)
        shutil.rmtree(Settings(home=home).feast_dir)
    ray_env = {"RAY_ADDRESS": cluster["gcs"], "RAY_AUTH_MODE": "disabled"}

    started = time.monotonic()
    out = run_cli(on_ray, "features", "--engine", "ray", **ray_env).stdout
    seconds = time.monotonic() - started
    assert "computed every day" in out, out[-3000:]
    # one shard per CPU of the cluster, spread over both nodes
    assert f"on ray: {2 * NODE_CPUS} shards per entity, on 2 node(s)" in out, out[-3000:]
    want_dir = Settings(home=demo).features_dir
    for name, order in ORDER.items():
        keys = [k.strip() for k in order.split(",")]
        got = pd.read_parquet(features / f"{name}.parquet")
        want = pd.read_parquet(want_dir / f"{name}.parquet")
        assert len(want) > 0, name
        got, want = (f.sort_values(keys).reset_index(drop=True) for f in (got, want))
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, obj=name)
    print(f"features on the two-node cluster: {seconds:.1f}s")  # shown with -s or on failure

    end = datetime.now(UTC)
    started = time.monotonic()
    _materialize(local, end)
    seconds = time.monotonic() - started
    log = _materialize(on_ray, end, RECSYS_FEAST__MATERIALIZE_ENGINE="ray", **ray_env)
    print(f"materialize: local {seconds:.1f}s, Ray {time.monotonic() - started - seconds:.1f}s")
    ran = re.findall(r"(\w+): \d+ rows in the window, .* by (\d+) Ray tasks on (\d+) node", log)
    assert {view for view, _, _ in ran} == {
        "user_features", "user_activity", "item_features", "item_attributes"
    }, log[-3000:]  # fmt: skip
    assert any(nodes == "2" for _, _, nodes in ran), f"no view loaded on both nodes: {ran}"
    print(f"Ray materialization (view, tasks, nodes): {ran}")
    validated = Settings(home=demo).validated_dir
    for table, key in (("users", "user_id"), ("items", "item_id")):
        ids = pd.read_parquet(table_path(validated, table))[key].astype(str)
        sample = sorted(ids.sample(80, random_state=5)) + ["__nobody__"]
        want = _online_rows(local, key, sample)
        assert want.drop(columns=key).notna().any().any(), f"{table}: nothing was loaded"
        pd.testing.assert_frame_equal(_online_rows(on_ray, key, sample), want,
                                      check_dtype=False, obj=table)  # fmt: skip
