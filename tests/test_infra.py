"""What the deployment files expose: the API only, every other service behind credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_compose_publishes_only_the_api_and_requires_credentials() -> None:
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert published == {"api": ["8000:8000"]}
    text = (INFRA / "docker-compose.yml").read_text()
    for secret in ("QDRANT_API_KEY", "REDIS_PASSWORD", "RECSYS_SERVE__API_KEYS"):
        assert f"${{{secret}:?" in text, f"{secret} must be required, not defaulted"
    assert "QDRANT__SERVICE__API_KEY" in compose["services"]["qdrant"]["environment"]
    assert "--requirepass" in compose["services"]["redis"]["command"]


def test_kuberay_keeps_ray_authentication_on_and_exposes_nothing() -> None:
    docs = list(yaml.safe_load_all((INFRA / "kuberay" / "raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth"
    services = [d for d in docs if d["kind"] == "Service"]
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert "serviceType" not in cluster["spec"]["headGroupSpec"]  # KubeRay's default: ClusterIP
