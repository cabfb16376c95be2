"""A local Ray runtime listens on loopback only (#14: Ray bound every interface, auth off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # starts a real Ray runtime

PROBE = """
import json, sys
from pathlib import Path

import psutil
import ray

from recsys.core.ray_runtime import ensure_ray
from recsys.core.settings import Settings

settings = Settings(home=Path(sys.argv[1]))
settings.ray.temp_dir = Path(sys.argv[2])
ensure_ray(settings)
ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # start workers too
listening = []
for proc in psutil.Process().children(recursive=True):
    try:
        listening += [
            [proc.name(), c.laddr.ip]
            for c in proc.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    except psutil.Error:
        pass
ray.shutdown()
print(json.dumps(listening))
"""


def test_local_ray_binds_loopback_only(tmp_path: Path) -> None:
    temp = Path("/tmp") / f"rr-{tmp_path.name[-12:]}"  # Ray's socket paths must stay short
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), str(temp)],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for name, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    exposed = [
        (name, ip) for name, ip in listening if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    ]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
