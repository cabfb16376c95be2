"""The deployment files: what they expose, and whether the tools that read them would accept them.

No container engine or cluster runs here, so each file is checked against the schema of the tool
that reads it: ``infra/compose.yaml`` against the Compose specification (with Debian's
``docker-compose`` where it is installed, which parses, interpolates and validates without a
daemon, and with ``jsonschema`` against the published compose-spec schema, which needs no
binary), ``infra/k8s/`` against the Kubernetes OpenAPI schemas that ``kubernetes-validate``
ships (strict: an unknown field fails). KubeRay's custom resources have no schema there; their
pod templates are validated as core/v1 pod templates and their own fields against KubeRay's v1
API. The security properties (only the API published, every secret required, Ray's token
authentication on, ClusterIP services, non-root pods) are asserted on top.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from recsys.core.settings import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
K8S = INFRA / "k8s"
HELM = K8S / "helm"

#: The Kubernetes version the manifests are validated for: the oldest minor release upstream
#: still supported when they were written (1.35, 1.36 and 1.37 then). kubernetes-validate
#: checks against the newest schemas it ships that are not newer than this.
KUBERNETES_VERSION = "1.35"

#: Dummy values for the secrets compose requires (``${X:?}``): interpolation fails without them.
COMPOSE_SECRETS = {
    "REDIS_PASSWORD": "test-redis-password",
    "QDRANT_API_KEY": "test-qdrant-key",
    "RAY_AUTH_TOKEN": "test-ray-token",
    "RECSYS_SERVE__API_KEYS": "{}",
}

#: Debian's docker-compose 1.29 package carries the compose-spec schema it validates with.
DEBIAN_COMPOSE_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")

#: The recsys image of the Dockerfile: every recsys container runs it (Ray workers included).
IMAGE = "recsys-fashion:0.1.0"

#: Secrets the manifests read and the keys each has (infra/k8s/config.yaml says how to make them).
SECRET_KEYS = {
    "recsys-secrets": {"redis-password", "redis-url", "qdrant-api-key", "api-keys"},
    "ray-auth": {"token"},
}

# KubeRay's v1 API (ray.io/v1; the json names in ray-operator/apis/ray/v1/*_types.go of KubeRay's
# repository): the fields of each object, for the custom resources kubernetes-validate has no
# schema for. Required ones are asserted separately. A field KubeRay adds later belongs here once
# the manifests use it.
RAYCLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip

# The Helm charts' values that the files in infra/k8s/helm set, from each chart's
# values.schema.json (bitnami/redis, qdrant/qdrant): Helm validates values against that schema at
# install time, but the charts are not here offline. ``None``: free-form below (a resources
# block, a list of env entries).
REDIS_CHART_VALUES: dict[str, Any] = {
    "architecture": None,
    "auth": {
        "enabled": None,
        "existingSecret": None,
        "existingSecretPasswordKey": None,
        "password": None,
        "usePasswordFiles": None,
    },
    "master": {
        "resources": None,
        "persistence": {"enabled": None, "size": None, "storageClass": None},
        "service": {"type": None},
    },
}
QDRANT_CHART_VALUES: dict[str, Any] = {
    "replicaCount": None,
    "image": {"repository": None, "tag": None, "pullPolicy": None},
    "env": None,
    "apiKey": None,
    "service": {"type": None},
    "persistence": {"size": None, "storageClassName": None, "accessModes": None},
    "resources": None,
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _k8s_docs() -> list[dict[str, Any]]:
    """Every object of every manifest in infra/k8s (the Helm values below it are not objects)."""
    return [doc for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]  # fmt: skip


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod an object makes: a Deployment's, each Ray group's,
    and the RayJob's submitter."""
    spec = doc.get("spec", {})
    if "template" in spec:
        yield doc["kind"], spec["template"]
    if doc["kind"] == "RayCluster":
        yield "headGroupSpec", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"workerGroupSpecs[{group['groupName']}]", group["template"]
    if "submitterPodTemplate" in spec:
        yield "submitterPodTemplate", spec["submitterPodTemplate"]


def _k8s_errors(doc: dict[str, Any], where: str = "") -> list[str]:
    """kubernetes-validate's complaint about ``doc`` in strict mode (an unknown field fails),
    with the path of the offending field; none when it is valid."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        return [f"{doc['kind']}/{doc['metadata']['name']}{where} at {path}: {exc.message}"]
    return []


def _unknown_keys(values: Any, known: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """Paths set in ``values`` that ``known`` does not list (``None`` in it: anything below)."""
    if known is None or not isinstance(values, dict):
        return []
    found = []
    for key, value in values.items():
        if key not in known:
            found.append(prefix + key)
        else:
            found += _unknown_keys(value, known[key], f"{prefix}{key}.")
    return found


def _is_setting(env_name: str) -> bool:
    """Whether ``RECSYS_A__B`` names a field of :class:`Settings` (a typo would be ignored:
    the settings ignore unknown variables, so the service would silently run on defaults)."""
    model: Any = Settings
    for part in env_name.removeprefix("RECSYS_").lower().split("__"):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
    return True


# --------------------------------------------------------------------------- compose


def test_compose_publishes_only_the_api_and_requires_credentials() -> None:
    compose = _compose()
    services = compose["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert published == {"api": ["8000:8000"]}
    assert not any("expose" in svc or svc.get("network_mode") == "host"
                   for svc in services.values())  # fmt: skip
    text = COMPOSE.read_text()
    for secret in COMPOSE_SECRETS:
        assert f"${{{secret}:?" in text, f"{secret} must be required, not defaulted"
        assert not re.search(rf"\${{{secret}(:?-|\}})", text), f"{secret} has a default"
    assert "QDRANT__SERVICE__API_KEY" in services["qdrant"]["environment"]
    assert "--requirepass" in services["redis"]["command"]
    # every Ray process and client of the cluster carries the token
    for name in ("ray-head", "ray-worker", "pipeline"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name


def test_compose_runs_the_project_image_wired_to_the_backends() -> None:
    services = _compose()["services"]
    recsys = ("ray-head", "ray-worker", "api", "pipeline")
    for name in recsys:
        assert services[name]["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name
        assert services[name]["image"] == IMAGE, name
    assert (INFRA / services["api"]["build"]["context"] / "Dockerfile").is_file()
    for name in ("ray-head", "ray-worker", "api"):
        env = services[name]["environment"]
        assert env["RECSYS_HOME"] == "/data"
        assert "recsys_data:/data" in services[name]["volumes"]
        assert env["RECSYS_VECTOR_STORE__TYPE"] == "qdrant"
        assert env["RECSYS_FEAST__ONLINE_STORE"] == "redis"
        assert "@redis:6379" in env["RECSYS_FEAST__REDIS_URL"]
        unknown = [k for k in env if k.startswith("RECSYS_") and not _is_setting(k)]
        assert not unknown, f"{name}: not settings: {unknown}"
    # the one-shot job: never started by `up`, submitted to the head's Jobs API
    pipeline = services["pipeline"]
    assert pipeline["profiles"] == ["pipeline"] and pipeline["restart"] == "no"
    assert pipeline["environment"]["RAY_ADDRESS"] == "http://ray-head:8265"
    assert pipeline["command"][:3] == ["ray", "job", "submit"]
    assert not any(arg.startswith("--entrypoint-") for arg in pipeline["command"])
    assert set(_compose()["volumes"]) == {"recsys_data", "qdrant_data", "redis_data"}


def _compose_schema() -> tuple[str, dict[str, Any]]:
    """The published compose-spec JSON schema, never a hand-written one: check-jsonschema's
    vendored copy (the current specification) where it is installed, else the copy Debian's
    docker-compose package validates with; the test is skipped with neither."""
    try:
        from check_jsonschema.builtin_schemas import get_builtin_schema
    except ImportError:
        pass
    else:
        return "check-jsonschema vendor.compose-spec", get_builtin_schema("vendor.compose-spec")
    if DEBIAN_COMPOSE_SCHEMA.is_file():
        schema = json.loads(DEBIAN_COMPOSE_SCHEMA.read_text())
        # it names its draft with a URI jsonschema does not know (draft/2019-09 over http)
        schema["$schema"] = "https://json-schema.org/draft/2019-09/schema"
        return str(DEBIAN_COMPOSE_SCHEMA), schema
    pytest.skip(
        "no compose-spec schema: install check-jsonschema (pip) or docker-compose (apt) "
        "for this check"
    )


def test_compose_file_matches_the_compose_specification_schema() -> None:
    source, schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(_compose())]  # fmt: skip
    assert not errors, f"against {source}: {errors}"


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (`apt-get install docker-compose`, as `make test` "
    "does); the compose-spec schema check above runs without it",
)
def test_docker_compose_parses_and_interpolates_the_file_without_a_daemon() -> None:
    """`docker-compose config` (1.29, Debian's package) reads the file as `docker compose up`
    would: YAML anchors, interpolation, the compose schema and cross-references (depends_on,
    volumes); it needs no daemon for that."""
    base = {k: v for k, v in os.environ.items()
            if k not in COMPOSE_SECRETS and not k.startswith(("COMPOSE_", "DOCKER_"))}  # fmt: skip
    args = ["docker-compose", "--file", str(COMPOSE), "--profile", "pipeline", "config"]
    done = subprocess.run(args, env=base | COMPOSE_SECRETS, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == {"redis", "qdrant", "ray-head", "ray-worker", "api",
                                         "pipeline"}  # fmt: skip
    api = resolved["services"]["api"]
    assert api["environment"]["RECSYS_VECTOR_STORE__API_KEY"] == COMPOSE_SECRETS["QDRANT_API_KEY"]
    # without the secrets it refuses to start anything, naming what is missing
    done = subprocess.run(args, env=base, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "set REDIS_PASSWORD" in done.stderr, done.stderr


def test_production_feast_config_is_the_repo_config_with_redis_and_a_shared_registry() -> None:
    """infra/feature_store.prod.yaml says what the cluster set-up runs: the committed repo
    config, with the registry a file on the shared data root and Redis as the online store."""
    repo = yaml.safe_load((REPO / "feature_repo" / "feature_store.yaml").read_text())
    prod = yaml.safe_load((INFRA / "feature_store.prod.yaml").read_text())
    for key in ("project", "provider", "offline_store", "entity_key_serialization_version"):
        assert prod[key] == repo[key], key
    assert prod["registry"]["registry_type"] == "file"
    assert prod["registry"]["path"] == "/data/feast/registry.db"
    assert prod["online_store"] == {
        "type": "redis",
        "connection_string": "${REDIS_CONNECTION_STRING}",
    }


PIPELINE = ["data synth", "validate", "features", "materialize", "embed", "train", "index"]


def test_the_pipeline_runs_every_stage_through_the_shells_between_submit_and_job(
    tmp_path: Path,
) -> None:
    """Both pipeline entrypoints go through `ray job submit`, which shell-quotes each word it is
    given (``shlex.join``) before Ray's job shell runs the line; KubeRay first pastes the RayJob's
    entrypoint into its submitter's bash line. A `&&` chain survives only as one ``bash -c``
    word: unquoted, the submitter would run the later stages itself, and word by word, `&&`
    would reach recsys as an argument. Here a stand-in `ray` does what the real one does with
    the words after ``--``, and a stand-in `recsys` records each stage it is run for."""
    log = tmp_path / "stages.log"
    (tmp_path / "recsys").write_text(
        f'#!/bin/sh\necho "${{IN_JOB:-outside the job}}: $*" >> {log}\n'
    )
    (tmp_path / "ray").write_text(
        f"#!{sys.executable}\nimport os, shlex, subprocess, sys\n"
        "words = sys.argv[sys.argv.index('--') + 1 :]\n"
        "env = os.environ | {'IN_JOB': 'job'}\n"
        "sys.exit(subprocess.call(shlex.join(words), shell=True, env=env))\n"
    )
    for tool in ("recsys", "ray"):
        (tmp_path / tool).chmod(0o755)
    env = os.environ | {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    job = next(d for d in _k8s_docs() if d["kind"] == "RayJob")
    # KubeRay's submitter line (common.GetK8sJobCommand), run with `bash -ce`
    line = (
        "if false; then :; else ray job submit --address http://recsys-head-svc:8265 -- "
        f"{job['spec']['entrypoint'].strip()} ; fi"
    )
    runs = {
        "compose": _compose()["services"]["pipeline"]["command"],  # exec form: no shell
        "RayJob": ["bash", "-ce", line],
    }
    for name, argv in runs.items():
        log.unlink(missing_ok=True)
        subprocess.run(argv, env=env, check=True, timeout=60)
        assert log.read_text().splitlines() == [f"job: {stage}" for stage in PIPELINE], name


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_the_cpu_torch_first_and_serves_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    text = "\n".join(lines)
    torch = text.index("'torch==2.13.0' --index-url https://download.pytorch.org/whl/cpu")
    assert torch < text.index("pip install .")
    assert re.search(r"^FROM python:3\.1[12]-slim", text, re.M)
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    assert 'CMD ["recsys", "serve", "--host", "0.0.0.0"' in text
    assert "RECSYS_HOME=/data" in text and 'VOLUME ["/data"]' in text
    # what it copies exists, and the build context leaves out the bulky and the private
    for line in (line for line in lines if line.startswith("COPY ")):
        for copied in line.split()[1:-1]:
            assert (REPO / copied).exists(), copied
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "tests"} <= ignored


def test_serve_command_takes_the_options_the_image_passes() -> None:
    cli = (REPO / "recsys" / "cli.py").read_text()
    serve = cli[cli.index("def serve(") : cli.index("def api_key(")]
    assert "host:" in serve and "port:" in serve


# --------------------------------------------------------------------------- Kubernetes


def test_core_kubernetes_objects_validate_strictly() -> None:
    docs = [d for d in _k8s_docs() if not d["apiVersion"].startswith("ray.io/")]
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
            "HorizontalPodAutoscaler"} <= kinds  # fmt: skip
    errors = [error for doc in docs for error in _k8s_errors(doc)]
    assert not errors, "\n".join(errors)
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"


def test_kuberay_objects_validate_as_far_as_schemas_exist() -> None:
    """kubernetes-validate has no schema for ray.io/v1: each pod template is validated as a
    core/v1 PodTemplate (with the object's metadata), and KubeRay's own fields against its v1
    API (unknown ones fail, as the operator's structural schema would prune them)."""
    docs = {d["kind"]: d for d in _k8s_docs() if d["apiVersion"].startswith("ray.io/")}
    assert set(docs) == {"RayCluster", "RayJob"}
    errors: list[str] = []
    for doc in docs.values():
        assert doc["apiVersion"] == "ray.io/v1"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        for where, template in _pod_templates(doc):
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": doc["metadata"],
                   "template": template}  # fmt: skip
            errors += _k8s_errors(pod, f" ({doc['kind']} {where})")
    assert not errors, "\n".join(errors)
    cluster = docs["RayCluster"]["spec"]
    assert set(cluster) - RAYCLUSTER_SPEC == set(), "fields KubeRay's RayCluster lacks"
    assert {"rayStartParams", "template"} <= set(cluster["headGroupSpec"])
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert set(cluster["headGroupSpec"]) - HEAD_GROUP_SPEC == set()
    for group in cluster["workerGroupSpecs"]:
        assert set(group) - WORKER_GROUP_SPEC == set(), group["groupName"]
        assert {"groupName", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in groups:
        # map[string]string: `num-cpus: 0` (a number) is rejected by the API server
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), params
    job = docs["RayJob"]["spec"]
    assert set(job) - RAYJOB_SPEC == set(), "fields KubeRay's RayJob lacks"
    assert job["entrypoint"].strip()
    # it runs on the RayCluster above rather than making one of its own
    assert job["clusterSelector"] == {"ray.io/cluster": docs["RayCluster"]["metadata"]["name"]}
    assert "rayClusterSpec" not in job and not job.get("shutdownAfterJobFinishes")
    # the driver stays on the head: one holding a worker's CPU would leave that worker short of
    # a training worker, which asks for as many CPUs as the largest node has
    assert not {"entrypointNumCpus", "entrypointResources"} & set(job)


def test_kubernetes_objects_reference_what_exists() -> None:
    docs = _k8s_docs()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        for where, template in _pod_templates(doc):
            spec = template["spec"]
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in names, where
            for container in spec["containers"]:
                assert container["image"] == IMAGE, where
                for source in container.get("envFrom", []):
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names, where
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in SECRET_KEYS[ref["name"]], (where, ref)
                    elif env["name"].startswith("RECSYS_"):
                        assert _is_setting(env["name"]), (where, env["name"])
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    unknown = [k for k in config["data"] if k.startswith("RECSYS_") and not _is_setting(k)]
    assert not unknown, f"recsys-config: not settings: {unknown}"
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in names


def test_api_probes_use_the_health_route() -> None:
    app = (REPO / "serving" / "app.py").read_text()
    assert '@app.get("/health"' in app
    deployment = next(d for d in _k8s_docs() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # liveness must not fail when a dependency is down: not /health, which answers 503 then
    assert container["livenessProbe"]["httpGet"]["path"] != "/health"
    assert {"requests", "limits"} <= set(container["resources"])


def test_kubernetes_keeps_ray_authentication_on_and_exposes_nothing() -> None:
    docs = _k8s_docs()
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    job = next(d for d in docs if d["kind"] == "RayJob")
    templates = [t for doc in (cluster, job) for _, t in _pod_templates(doc)]
    assert len(templates) == 3  # head, one worker group, the job submitter
    for template in templates:
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth"
    services = [d for d in docs if d["kind"] == "Service"]
    assert services and all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert "serviceType" not in cluster["spec"]["headGroupSpec"]  # KubeRay's default: ClusterIP
    assert not any(d["kind"] in ("Ingress", "Secret") for d in docs)  # no secret in a manifest


def test_every_pod_runs_as_a_non_root_user_without_privilege_escalation() -> None:
    for doc in _k8s_docs():
        for where, template in _pod_templates(doc):
            security = template["spec"]["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, where
            for container in template["spec"]["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where


# --------------------------------------------------------------------------- Helm values


@pytest.mark.parametrize(
    ("name", "known"),
    [("redis-values.yaml", REDIS_CHART_VALUES), ("qdrant-values.yaml", QDRANT_CHART_VALUES)],
)
def test_helm_values_set_only_known_chart_values(name: str, known: dict[str, Any]) -> None:
    values = yaml.safe_load((HELM / name).read_text())
    assert isinstance(values, dict) and values
    assert _unknown_keys(values, known) == []


def test_helm_values_keep_credentials_out_and_services_internal() -> None:
    redis = yaml.safe_load((HELM / "redis-values.yaml").read_text())
    assert redis["auth"]["enabled"] is True and "password" not in redis["auth"]
    assert redis["auth"]["existingSecret"] == "recsys-secrets"
    assert redis["auth"]["existingSecretPasswordKey"] in SECRET_KEYS["recsys-secrets"]
    assert redis["master"]["service"]["type"] == "ClusterIP"
    qdrant = yaml.safe_load((HELM / "qdrant-values.yaml").read_text())
    assert "apiKey" not in qdrant  # a literal key would sit in the release's values
    env = {e["name"]: e for e in qdrant["env"]}
    ref = env["QDRANT__SERVICE__API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "recsys-secrets", "key": "qdrant-api-key"}
    assert qdrant["service"]["type"] == "ClusterIP"
