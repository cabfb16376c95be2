"""Schemathesis against a live ``recsys serve`` (#14): no 5xx, every answer as documented.

Cases are generated from the API's own OpenAPI schema, valid and invalid alike (about a
thousand, seeded); each response must not be a server error, must have a status the schema
documents for that route, and must match the documented body and content type. Schemathesis
runs as its CLI: its pytest plugin does not load with this pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveApi

pytestmark = pytest.mark.e2e

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"  # noqa: E501


def test_no_server_error_and_every_answer_documented(live_home: Path) -> None:
    api = LiveApi(live_home).start()
    try:
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run",
             f"{api.url}/openapi.json", "--checks", CHECKS, "--max-examples", "100",
             "--seed", "1", "--phases", "examples,coverage,fuzzing", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=live_home,  # its cache goes there
        )  # fmt: skip
    finally:
        api.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
