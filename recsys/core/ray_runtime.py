"""Start or join Ray the same way from every entrypoint.

Locally this starts a small single-node Ray with a bounded object store (Ray otherwise reserves
a large share of /dev/shm). With ``RAY_ADDRESS`` set, as ``ray job submit`` does on a cluster,
it joins that cluster instead and the limits below are the cluster's business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.core.epoch_loop import Fit, run_plain
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.terminal import note_ray_session, ray_logs_quieted

log = logging.getLogger(__name__)


def ensure_ray(settings: Settings) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    quiet = ray_logs_quieted()  # the command sends Ray's logs to the data root: keep them there
    if on_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False,
                 configure_logging=not quiet)  # fmt: skip
        return
    # A private single-node runtime: no dashboard, and every port bound to loopback. On Linux
    # Ray binds all interfaces unless told it is not a cluster (this variable; passing the
    # node address 127.0.0.1 is not enough: Ray swaps it for the machine's address). Nothing
    # then listens beyond this machine, so Ray's token authentication (on by default in 2.60)
    # only adds a warning; joining a cluster above keeps it, since those ports are reachable.
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read when ray was imported: maybe before
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    num_cpus = settings.ray.num_cpus or os.cpu_count() or 1
    settings.ray.temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=settings.ray.object_store_memory,
        include_dashboard=False,
        _temp_dir=str(settings.ray.temp_dir),
        log_to_driver=False,
        configure_logging=not quiet,
        logging_level=logging.WARNING,
    )
    log.info("started local Ray with %d CPUs", num_cpus)
    with contextlib.suppress(Exception):  # only a convenience link; Ray's layout may change
        from ray._private import worker

        note_ray_session(Path(worker._global_node.get_logs_dir_path()))


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


def ray_wanted(settings: Settings, choice: bool | None = None) -> bool:
    """Whether a job goes through Ray: ``choice`` when a command gives one (``--ray/--no-ray``),
    else ``settings.ray.use``; ``auto`` takes Ray when ``RAY_ADDRESS`` names a cluster or more
    than one training worker is asked for. One local worker gains nothing from Ray: the same
    code then runs in this process and skips Ray's start-up (see ``RaySettings.use``)."""
    if choice is not None:
        return choice
    if settings.ray.use != "auto":
        return settings.ray.use == "always"
    return on_cluster() or settings.train.num_workers > 1


def on_cluster() -> bool:
    """Whether jobs join an existing Ray cluster (``RAY_ADDRESS``, as ``ray job submit`` sets
    it) rather than a private runtime on this machine."""
    return bool(os.environ.get("RAY_ADDRESS"))


def node_cpus(settings: Settings) -> list[int]:
    """CPUs of each node jobs run on: the alive nodes of the cluster when ``RAY_ADDRESS`` is
    set (joined here if not yet), else this machine alone (``ray.num_cpus`` or its cores).

    A cluster is sized from its own resources, not the driver's: the driver of a submitted
    job may run on a small head node while the workers' nodes are large, or the reverse.
    """
    if not on_cluster():
        return [settings.ray.num_cpus or os.cpu_count() or 1]
    import ray

    ensure_ray(settings)
    cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    cpus = [c for c in cpus if c > 0]
    if not cpus:
        raise RuntimeError(
            f"the Ray cluster at {os.environ['RAY_ADDRESS']} has no node with CPUs: start a "
            "worker node (`ray start --address=<head>:6379 --num-cpus=N`) before the job"
        )
    return cpus


def local_cpus(settings: Settings) -> int:
    """CPUs one Ray task or actor may hold: the largest node's (on this machine: all of it),
    so that a request never exceeds what any node can grant and waits forever."""
    return max(node_cpus(settings))


def worker_threads(settings: Settings, workers: int | None = None) -> int:
    """Threads (and Ray CPUs) per training worker: ``train.cpus_per_worker``, else the CPUs of
    the nodes (this machine, or the cluster's when ``RAY_ADDRESS`` is set) shared among the
    workers, capped at the largest node's so every worker fits on some node."""
    workers = workers or settings.train.num_workers
    if settings.train.cpus_per_worker:
        return settings.train.cpus_per_worker
    cpus = node_cpus(settings)
    return max(1, min(max(cpus), sum(cpus) // workers))


def fit_torch(
    settings: Settings,
    train_func: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    name: str,
    weights: str | None,
    storage: Path | None = None,
    plain: Fit | None = None,
    use_ray: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Run ``train_func`` on ``train.num_workers`` Ray Train workers of ``config["threads"]``
    CPUs each: the one way every model (and the training benchmark) trains through Ray. With
    ``plain`` (the fit that ``train_func`` wraps) and :func:`ray_wanted` false (``use_ray``, a
    command's choice, else the settings), the same fit runs in this process instead.

    Returns (rank 0's weights read from part ``weights`` of its last checkpoint, the last
    reported metrics with ``backend`` "ray" or "in-process", seconds of the fit). ``weights``
    None: the loop reports no checkpoint (the benchmark's empty loop) and no weights come back.
    """
    if plain is not None and not ray_wanted(settings, use_ray):
        started = time.perf_counter()
        state, metrics = run_plain(plain, config)
        metrics |= {"backend": "in-process", "workers": 1, "nodes": 1, "threads": config["threads"]}
        return state, metrics, time.perf_counter() - started
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(settings)
    trainer = TorchTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=settings.train.num_workers,
            use_gpu=False,
            resources_per_worker={"CPU": config["threads"]},
        ),
        run_config=train_run_config(settings, name, storage),
    )
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    state: dict[str, Any] = {}
    if weights is not None:
        if result.checkpoint is None:
            raise RuntimeError(
                f"Ray Train returned no checkpoint for {name}: {result.error!r}. See the worker "
                f"logs under {settings.ray.temp_dir}."
            )
        from safetensors.torch import load_file

        with result.checkpoint.as_directory() as ckpt:
            state = load_file(Run(Path(ckpt)).part(weights, "tensors"))
    metrics = dict(result.metrics or {}) | {"backend": "ray", "threads": config["threads"]}
    return state, metrics, seconds


def report_last(metrics: dict[str, Any], state: dict[str, Any] | None, weights: str) -> None:
    """In a Ray Train worker: the last report, with rank 0's weights (``state``; None on the
    other ranks) as a checkpoint holding part ``weights`` (named as in a run folder). Under
    Train V2 that checkpoint
    is also what carries the metrics back to the driver."""
    import tempfile

    import ray
    import ray.train
    import torch.distributed as dist

    # Where the workers ran, for the run's record (every rank takes part in the gather): a
    # job meant for N nodes that landed on one says so in its metrics.
    nodes = [ray.get_runtime_context().get_node_id()]
    if dist.is_available() and dist.is_initialized():
        nodes = [None] * dist.get_world_size()
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    metrics = metrics | {"workers": len(nodes), "nodes": len(set(nodes))}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state is not None:
            from safetensors.torch import save_file

            part = Run(Path(tmp)).part(weights, "tensors")
            save_file({k: v.contiguous() for k, v in state.items()}, part)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
