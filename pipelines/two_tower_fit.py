"""The two-tower per-worker fit: what each Ray Train worker runs, and the same loop without Ray.

Kept apart from :mod:`pipelines.train` (the driver side: Feast, DuckDB, pandas, evaluation)
so that a Ray worker, which imports the module of the ``train_func`` it is sent, imports torch,
numpy and the model only: importing the driver module as well added ~1 s quiet, up to ~4 s on a
busy machine, to every Ray Train run's start-up (``benchmarks/training_speed.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from models.two_tower import WEIGHTS, TwoTower, TwoTowerConfig, in_batch_softmax_loss
from recsys.core.epoch_loop import final_metrics, ray_worker, run_plain, train_epochs

# Sparse gradients for the id tables unless the config says ``"sparse": False``. Measured by
# benchmarks/training_speed.py: on ASOS (43.6k users, 29.7k items) the loop runs 1.2-1.7x
# faster at the same recall@10; on the demo shop (5k x 2k) it is as fast, recall within seed
# noise.
SPARSE_ID_TABLES = True


def _optimizers(model: TwoTower, config: dict[str, Any]) -> list[torch.optim.Optimizer]:
    """SparseAdam for the id tables (user, item, history item), Adam for the rest: dense Adam
    reads and writes every row of every table each step, a cost that grows with the catalogue
    and the user base while a batch touches ~1k users and items; sparse gradients make a step
    cost what the batch touches. The attribute tables stay dense (a handful of rows hit
    thousands of times a batch: a sparse gradient would only add a sort). SparseAdam has no
    weight decay, so ``weight_decay > 0`` (or ``"sparse": False``) trains all with dense Adam."""
    lr, decay = config["lr"], config["weight_decay"]
    trained = [p for p in model.parameters() if p.requires_grad]  # not a frozen user_id table
    if not config.get("sparse", SPARSE_ID_TABLES) or decay:
        return [torch.optim.Adam(trained, lr=lr, weight_decay=decay)]
    tables = [t for t in (model.user_id, model.item_id, model.history_item)
              if t.weight.requires_grad]  # fmt: skip
    for table in tables:
        table.sparse = True
    sparse_ids = {id(t.weight) for t in tables}
    return [
        torch.optim.SparseAdam([t.weight for t in tables], lr=lr),
        torch.optim.Adam([p for p in trained if id(p) not in sparse_ids], lr=lr),
    ]


def fit_two_tower(
    config: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    report: Callable[[dict[str, Any]], None] | None = None,
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The two-tower fit on this rank's shard of the encoded examples (a fit as
    :mod:`pipelines.epoch_metrics` runs them); the final metrics add the seconds of the setup
    (arrays, model, DDP) to the loop's, so that a caller can tell where a run's time went."""
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

    def losses() -> Iterator[torch.Tensor]:
        model.train()
        order = torch.as_tensor(rng.permutation(n))
        for start in range(0, n - 1, batch):
            idx = order[start : start + batch]
            if len(idx) < 2:
                continue
            b = {k: v[idx] for k, v in tensors.items()}
            users, items = model(b)
            yield in_batch_softmax_loss(
                users, items, b["item_idx"], log_q[b["item_idx"]], config["temperature"]
            )

    history = train_epochs(config["epochs"], losses, optimizers, ("examples", n), report,
                           "two-tower", batch)  # fmt: skip
    state = {k: v.contiguous() for k, v in base.state_dict().items()} if rank == 0 else None
    return state, final_metrics(history) | {"setup_seconds": round(setup_seconds, 3)}


def train_func(config: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`fit_two_tower` on this rank's shard, under 1 or N workers.
    The item attribute and text tables are buffers that every rank loads and never changes:
    DDP's default re-broadcast of all buffers before each step would send the text table
    (items x 384 floats, ~45 MB on ASOS) for nothing."""
    ray_worker(
        fit_two_tower, config, WEIGHTS, parallel_strategy_kwargs={"broadcast_buffers": False}
    )


def train_plain(config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The same fit as :func:`train_func` without Ray: the baseline against which Ray Train's
    overhead is measured."""
    return run_plain(fit_two_tower, config)
