"""Start or join Ray the same way from every entrypoint.

Locally this starts a small single-node Ray with a bounded object store (Ray otherwise reserves
a large share of /dev/shm). With ``RAY_ADDRESS`` set, as ``ray job submit`` does on a cluster,
it joins that cluster instead and the limits below are the cluster's business.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from recsys.config import Settings

log = logging.getLogger(__name__)


def ensure_ray(settings: Settings) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return
    # A private single-node runtime: no dashboard, nothing listening beyond this machine, so
    # Ray's token authentication (on by default in 2.60) only adds a warning here.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    num_cpus = settings.ray.num_cpus or os.cpu_count() or 1
    settings.ray.temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=settings.ray.object_store_memory,
        include_dashboard=False,
        _temp_dir=str(settings.ray.temp_dir),
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    log.info("started local Ray with %d CPUs", num_cpus)


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment variables for every Ray Train worker: OpenMP threads that sleep while they
    wait (``settings.ray.worker_omp_wait_policy``, PASSIVE by default).

    torch's OpenMP threads spin between parallel regions by default. Alone on the cores that
    is fastest (the plain loop), but a Ray worker shares them with Ray's own threads and
    processes (controller, raylet, the worker's core threads), and spinning threads starve
    them: on ASOS the two-tower loop took 54.8 s inside Ray against 19.2 s plain, and 29.6 s
    inside Ray once its threads waited passively (``benchmarks/training_speed.py``).
    """
    return {"OMP_WAIT_POLICY": settings.ray.worker_omp_wait_policy}


def train_run_config(settings: Settings, name: str, storage: Path | None = None) -> Any:
    """The ``RunConfig`` of every ``TorchTrainer`` here: results under the data root (or
    ``storage``) and :func:`worker_env` in each worker."""
    from ray.train import RunConfig

    return RunConfig(
        name=name,
        storage_path=str(storage or settings.home / "ray_results"),
        worker_runtime_env={"env_vars": worker_env(settings)},
    )


def local_cpus(settings: Settings) -> int:
    """CPUs Ray may hand out on this machine (the cluster decides when RAY_ADDRESS is set)."""
    return settings.ray.num_cpus or os.cpu_count() or 1
