"""What every epoch loop here reports, in one shape: the two-tower and item2vec loops (each
run by Ray Train workers and by plain PyTorch) hand these dicts to the same callers and
benchmarks, so they are built in one place. Standard library only: Ray workers import it."""

from __future__ import annotations

import time
from typing import Any


def epoch_metrics(
    epoch: int, total_loss: float, steps: int, started: float, counted: tuple[str, int]
) -> dict[str, Any]:
    """One epoch: its number (from 1), mean loss over its steps, what it counted (e.g.
    ``("examples", n)``) and its seconds since ``started`` (``time.perf_counter()``)."""
    name, count = counted
    return {
        "epoch": epoch,
        "loss": total_loss / max(steps, 1),
        name: count,
        "epoch_seconds": round(time.perf_counter() - started, 3),
    }


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's metrics plus the loss of every epoch and the loop's total seconds."""
    return history[-1] | {
        "loss_history": [round(h["loss"], 6) for h in history],
        "loop_seconds": round(sum(h["epoch_seconds"] for h in history), 3),
    }
