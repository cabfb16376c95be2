"""Per-stage time budgets for the dependencies of a request (online store, vector store).

A slow dependency must cost a request its budget, not its answer: the call runs on a small
thread pool and the request waits at most ``timeout_ms`` for it; past that the caller gets
:class:`StageTimeout`, answers from the remaining sources and marks the response degraded.
The late call finishes in the background and its result is dropped (a thread cannot be
killed; the pool's size bounds how many such calls can pile up against a hung dependency).
The hop to the pool costs tens of microseconds, measured in ``benchmarks/serving_latency.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class StageTimeout(TimeoutError):
    """A dependency did not answer within its stage's budget."""


class StageGuard:
    """Runs dependency calls under per-stage time budgets (milliseconds; <= 0: no budget)."""

    def __init__(self, budgets_ms: dict[str, float], workers: int = 8) -> None:
        self.budgets_ms = dict(budgets_ms)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stage")
        self.timeouts: dict[str, int] = {}

    def call(self, stage: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        budget = self.budgets_ms.get(stage, 0.0)
        if budget <= 0:
            return fn(*args, **kwargs)
        future = self._pool.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=budget / 1e3)
        except FutureTimeout:
            future.cancel()
            self.timeouts[stage] = self.timeouts.get(stage, 0) + 1
            raise StageTimeout(f"{stage} took longer than its {budget:g} ms budget") from None

    def wrap(self, stage: str, fn: Callable[P, T]) -> Callable[P, T]:
        """``fn`` with this stage's budget applied on every call."""
        return partial(self.call, stage, fn)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
