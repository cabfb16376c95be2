"""Shared fixtures: the whole pipeline, run once per session through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import Settings

REPO = Path(__file__).resolve().parents[1]
RECSYS = Path(sys.executable).with_name("recsys")

# Small but structured: enough purchases for a held-out week, fast enough for CI on 2 cores.
E2E_SIZE = {"users": 800, "items": 300, "days": 40}


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


@pytest.fixture(scope="session")
def pipeline_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Every stage of ``recsys demo --no-serve`` on a tiny generated shop: (data root, output)."""
    home = tmp_path_factory.mktemp("recsys_home")
    size = [f"--{k}={v}" for k, v in E2E_SIZE.items()]
    proc = run_cli(home, "demo", "--no-serve", *size)
    return home, proc.stdout


@pytest.fixture(scope="session")
def pipeline_settings(pipeline_home: tuple[Path, str]) -> Settings:
    return Settings(home=pipeline_home[0])
