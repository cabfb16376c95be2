"""The two-tower per-worker fit: what each Ray Train worker runs, and the same loop without Ray.

Kept apart from :mod:`pipelines.train` (the driver side: Feast, DuckDB, pandas, evaluation)
so that a Ray worker, which imports the module of the ``train_func`` it is sent, imports torch,
numpy and the model only: importing the driver module as well added ~1 s quiet, up to ~4 s on a
busy machine, to every Ray Train run's start-up (``benchmarks/training_speed.py``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.two_tower import WEIGHTS, TwoTower, TwoTowerConfig, in_batch_softmax_loss
from pipelines.epoch_metrics import epoch_metrics, final_metrics
from recsys.core.ray_runtime import report_last

Report = Callable[[dict[str, Any], dict[str, torch.Tensor] | None, bool], None]
# Sparse gradients for the id tables unless the config says ``"sparse": False``. Measured by
# benchmarks/training_speed.py: on ASOS (43.6k users, 29.7k items) the loop runs 1.2-1.7x
# faster at the same recall@10; on the demo shop (5k x 2k) it is as fast, recall within seed
# noise.
SPARSE_ID_TABLES = True


def _optimizers(model: TwoTower, config: dict[str, Any]) -> list[torch.optim.Optimizer]:
    """SparseAdam for the id tables (user, item, history item), Adam for the rest.

    Dense Adam reads and writes every row of every table each step, a cost that grows with
    the catalogue and the user base while a batch touches ~1k users and items; sparse
    gradients make a step cost what the batch touches. The attribute tables stay dense (a
    handful of rows hit thousands of times a batch: a sparse gradient would only add a sort).
    SparseAdam has no weight decay, so ``weight_decay > 0`` (or ``"sparse": False``) trains
    everything with dense Adam, as before.
    """
    lr, decay = config["lr"], config["weight_decay"]
    if not config.get("sparse", SPARSE_ID_TABLES) or decay:
        return [torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)]
    tables = [model.user_id, model.item_id, model.history_item]
    for table in tables:
        table.sparse = True
    sparse_ids = {id(t.weight) for t in tables}
    return [
        torch.optim.SparseAdam([t.weight for t in tables], lr=lr),
        torch.optim.Adam([p for p in model.parameters() if id(p) not in sparse_ids], lr=lr),
    ]


def fit_two_tower(
    config: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    report: Report | None = None,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> dict[str, torch.Tensor] | None:
    """The two-tower epoch loop, shared by Ray Train (:func:`train_func`) and plain PyTorch
    (:func:`train_plain`), so that the two can be timed against each other on equal terms.

    Reads this rank's shard (``rank::world``) of the encoded examples and fits. ``prepare``
    wraps the model (Ray's ``prepare_model``: DDP under N workers); ``report(metrics, state,
    last)`` gets each epoch's metrics (the last with the loss history and the seconds of the
    loop and of the setup before it: arrays, model, DDP; so a caller can tell where a run's
    time went), and on the last epoch rank 0's weights. Returns the weights on rank 0,
    ``None`` elsewhere.
    """
    torch.set_num_threads(max(1, int(config["threads"])))
    torch.manual_seed(config["seed"])
    setup_started = time.perf_counter()
    with np.load(config["arrays"], allow_pickle=False) as data:
        shared = {"log_q", "item_table", "item_text"}
        arrays = {k: data[k] if k in shared else data[k][rank::world] for k in data.files}
    log_q = torch.as_tensor(arrays.pop("log_q"), dtype=torch.float32)
    base = TwoTower(TwoTowerConfig(**config["model"]))
    base.set_item_table(torch.as_tensor(arrays.pop("item_table")))
    text = arrays.pop("item_text", None)
    if base.text_proj is not None:
        if text is None:
            raise ValueError(
                f"{config['arrays']} has no item_text table but the model config has "
                f"text_dim={base.cfg.text_dim}: write the arrays with encode_training_set"
            )
        base.set_item_text(torch.as_tensor(text))
    optimizers = _optimizers(base, config)  # before DDP: it must see the sparse tables
    model = prepare(base) if prepare is not None else base
    n = len(arrays["item_idx"])
    batch = int(config["batch_size"])
    tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    rng = np.random.default_rng(config["seed"] + rank)
    setup_seconds = time.perf_counter() - setup_started
    state, history = None, []
    for epoch in range(config["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.as_tensor(rng.permutation(n))
        total, steps = 0.0, 0
        for start in range(0, n - 1, batch):
            idx = order[start : start + batch]
            if len(idx) < 2:
                continue
            b = {k: v[idx] for k, v in tensors.items()}
            users, items = model(b)
            loss = in_batch_softmax_loss(
                users, items, b["item_idx"], log_q[b["item_idx"]], config["temperature"]
            )
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total += float(loss.detach())
            steps += 1
        metrics = epoch_metrics(epoch + 1, total, steps, started, ("examples", n))
        history.append(metrics)
        last = epoch + 1 == config["epochs"]
        if last:
            metrics = final_metrics(history) | {"setup_seconds": round(setup_seconds, 3)}
            if rank == 0:
                state = {k: v.contiguous() for k, v in base.state_dict().items()}
        if report is not None:
            report(metrics, state, last)
    return state


def train_func(config: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`fit_two_tower` on this rank's shard.

    The same function runs under 1 or N workers (DDP through ``prepare_model``); only rank 0
    writes weights, into the checkpoint it reports with the last epoch's metrics (under Train
    V2 that checkpoint is also what carries the metrics back to the driver).
    """
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()

    def report(metrics: dict[str, Any], state: dict[str, torch.Tensor] | None, last: bool) -> None:
        if last:
            report_last(metrics, state, WEIGHTS)
        else:
            ray.train.report(metrics)

    # The item attribute and text tables are buffers that every rank loads from the same
    # arrays and never changes: DDP's default re-broadcast of all buffers before each step
    # would send the text table (items x 384 floats, ~45 MB on ASOS) for nothing.
    prepare = functools.partial(
        ray.train.torch.prepare_model, parallel_strategy_kwargs={"broadcast_buffers": False}
    )
    fit_two_tower(config, ctx.get_world_rank(), ctx.get_world_size(), report, prepare)


def train_plain(config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The same fit as :func:`train_func` in this process, without Ray: (weights, metrics).

    The baseline against which Ray Train's overhead is measured. The metrics are the last
    epoch's report, as Ray's ``Result.metrics`` holds them.
    """
    reports: list[dict[str, Any]] = []
    previous = torch.get_num_threads()
    try:
        state = fit_two_tower(config, report=lambda metrics, _state, _last: reports.append(metrics))
    finally:
        torch.set_num_threads(previous)
    assert state is not None  # rank 0 always returns its weights
    return state, reports[-1]
