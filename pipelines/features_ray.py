"""The feature queries on Ray: each entity shard a Ray task (``RECSYS_FEATURES__ENGINE=ray``).

``pipelines.features`` splits the validated tables by the hash of ``user_id`` (and of
``item_id``) under the data root, which every node mounts, and each task here runs the very same
SQL over its shard in its own DuckDB and writes a part file there; the driver gathers the parts
into the usual feature files. With ``RAY_ADDRESS`` the tasks go to that cluster, else to a local
Ray (:func:`recsys.core.ray_runtime.ensure_ray`). This module is what a Ray worker imports to run
a task: the DuckDB side only, no Feast or torch.
"""

from __future__ import annotations

import logging

from pipelines.features import ShardJob, ShardResult, run_shard
from recsys.core.ray_runtime import ensure_ray, node_cpus
from recsys.core.settings import Settings
from recsys.core.terminal import progress_bar

log = logging.getLogger(__name__)


def _shard_task(job: ShardJob) -> ShardResult:
    """One shard in a Ray worker, and the node it ran on (the run reports where work went)."""
    import ray

    return ShardResult(run_shard(job), ray.get_runtime_context().get_node_id())


class RayShards:
    """Runs shard jobs as Ray tasks of one CPU each (a one-thread DuckDB), spread over the
    nodes; by default as many shards as the cluster has CPUs, so one wave of tasks fills it.

    Shards are spread (``SPREAD``) rather than packed: each reads and writes its own files on
    the shared data root, so spreading them spreads that I/O and the DuckDB memory over the
    nodes, where Ray's default would first fill the driver's node.
    """

    engine = "ray"

    def __init__(self, settings: Settings, shards: int | None = None) -> None:
        self.settings = settings
        cpus = node_cpus(settings)  # the cluster's when RAY_ADDRESS is set (joined here)
        self.shards = shards or settings.features.ray_shards or sum(cpus)
        self.scratch = settings.scratch_dir
        log.info("features on Ray: %d shards per entity over %d node(s) of %s CPUs",
                 self.shards, len(cpus), "+".join(map(str, cpus)))  # fmt: skip

    def run(self, jobs: list[ShardJob], what: str) -> list[ShardResult]:
        import ray

        ensure_ray(self.settings)
        task = ray.remote(_shard_task).options(num_cpus=1, scheduling_strategy="SPREAD")
        pending = [task.remote(job) for job in jobs]
        results: list[ShardResult] = []
        with progress_bar(what, len(jobs), "shards") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results.extend(ray.get(done))  # a failed shard raises here, with its error
                bar.advance(len(done))
        return results
