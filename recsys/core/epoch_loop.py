"""The epoch loop of every PyTorch fit (two-tower, item2vec, the session GRU), what it
reports, and the two ways to run a fit, Ray Train and plain PyTorch: one loop, so that the two
are timed on equal terms. In the core so that a model module can train itself through Ray Train
(:func:`recsys.core.ray_runtime.fit_torch`). Light to import (Ray workers import it): torch and
Ray are imported where used.

A fit is ``fit(config, rank=0, world=1, report=None, prepare=None)``: it trains on shard
``rank::world`` of ``config["arrays"]``, its model wrapped by ``prepare`` (Ray's
``prepare_model``), reports every epoch but the last and returns (rank 0's weights or None, the
final metrics)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)
Fit = Callable[..., tuple[dict[str, Any] | None, dict[str, Any]]]


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's metrics plus the loss of every epoch and the loop's total seconds."""
    return history[-1] | {
        "loss_history": [round(h["loss"], 6) for h in history],
        "loop_seconds": round(sum(h["epoch_seconds"] for h in history), 3),
    }


def train_epochs(
    epochs: int,
    losses: Callable[[], Iterator[Any]],
    optimizers: list[Any],
    counted: tuple[str, int],
    report: Callable[[dict[str, Any]], None] | None = None,
    log_as: str | None = None,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """A step of every optimizer on each loss ``losses()`` yields (shuffled batches, drawn after
    the step before), ``epochs`` times; every epoch but the last is reported (the caller reports
    the last with the weights) and logged as ``log_as``. With ``batch_size`` (of the counted
    unit) the steps show as one progress bar over all epochs. Returns the metrics of every
    epoch."""
    from recsys.core.terminal import progress_bar

    history: list[dict[str, Any]] = []
    per_epoch = -(-counted[1] // batch_size) if batch_size else None
    name = f"{log_as} fit" if log_as else "fit"
    with progress_bar(name, per_epoch and epochs * per_epoch, "batches") as bar:
        for epoch in range(epochs):
            history.append(_epoch(epoch, losses, optimizers, counted, bar.advance))
            if log_as is not None:
                m = history[-1]
                log.info("%s epoch %d: loss %.4f (%.1fs)", log_as, epoch + 1, m["loss"],
                         m["epoch_seconds"])  # fmt: skip
            if report is not None and epoch + 1 < epochs:
                report(history[-1])
    return history


def _epoch(
    epoch: int,
    losses: Callable[[], Iterator[Any]],
    optimizers: list[Any],
    counted: tuple[str, int],
    step_done: Callable[[int], None],
) -> dict[str, Any]:
    """One pass over ``losses()``: its metrics."""
    started = time.perf_counter()
    total, steps = 0.0, 0
    for loss in losses():
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        total += float(loss.detach())
        steps += 1
        step_done(1)
    return {
        "epoch": epoch + 1,
        "loss": total / max(steps, 1),  # the mean over the epoch's steps
        counted[0]: counted[1],  # what the epoch went through, e.g. ("examples", n)
        "epoch_seconds": round(time.perf_counter() - started, 3),
    }


def ray_worker(fit: Fit, config: dict[str, Any], weights: str, **prepare_kwargs: Any) -> None:
    """A Ray Train ``train_func``'s body: ``fit`` this worker's shard, then report the final
    metrics with rank 0's weights (part ``weights``) as the checkpoint, which under Train V2 is
    also what carries the metrics back to the driver."""
    import ray.train
    import ray.train.torch

    from recsys.core.ray_runtime import report_last

    ctx = ray.train.get_context()
    prepare = functools.partial(ray.train.torch.prepare_model, **prepare_kwargs)
    state, metrics = fit(
        config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.report, prepare
    )
    report_last(metrics, state, weights)


def run_plain(fit: Fit, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``fit`` in this process: (weights, final metrics), as Ray's ``Result`` holds them; the
    torch thread count that the fit sets is restored after."""
    import torch

    previous = torch.get_num_threads()
    try:
        state, metrics = fit(config)
    finally:
        torch.set_num_threads(previous)
    assert state is not None  # rank 0 always returns its weights
    return state, metrics
