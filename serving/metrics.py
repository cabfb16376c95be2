"""Prometheus metrics of the API: requests, latency per endpoint and per stage, fallbacks.

In one process each app gets its own registry, so several apps in one process (tests) never
clash. Under several worker processes (``recsys serve --workers N``) a registry would only
see the worker that happens to answer the scrape, so each worker counts into
prometheus-client's multiprocess files instead (``PROMETHEUS_MULTIPROC_DIR``, a fresh
directory per server: :func:`worker_metrics_dir`) and ``/metrics`` adds up every worker's
files, whichever worker answers it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: Every metric of the API is named ``recsys_...``.
PREFIX = "recsys_"
# Buckets sized for a service whose median is about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.025, 0.05, 0.1, 0.25, 1.0)

#: Where prometheus-client keeps each process's values in multiprocess mode. It reads the
#: variable once, when it is first imported: a process must have it before that.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A server's directory is ``<temp dir>/recsys-metrics-<server pid>-<random>``.
_DIR_PREFIX = "recsys-metrics-"


def multiprocess_mode() -> bool:
    """Whether this process counts into multiprocess files.

    What prometheus-client chose when first imported, not the variable now: Feast sets
    ``PROMETHEUS_MULTIPROC_DIR`` for itself when ``feast.metrics`` is imported (after
    prometheus-client, in the in-process tests and a one-worker server), and reading files
    then would expose none of this process's counts, which are in memory.
    """
    return values.ValueClass is not values.MutexValue


@contextmanager
def worker_metrics_dir() -> Iterator[Path]:
    """A fresh, empty multiprocess directory for the workers of one server, named in
    ``PROMETHEUS_MULTIPROC_DIR`` while the server runs (workers started meanwhile inherit it)
    and removed with everything in it afterwards.

    A private temporary directory, not one under the data root: the files are keyed by process
    id and mean something only to the server that wrote them, so two servers on one data root
    (two ports, a restart overlapping the old server, a data root shared by machines) must not
    share them, and memory-mapped files belong on a local disk, not a network volume. A
    variable inherited from the caller is replaced, not reused: whatever another server left
    in that directory would be added to this one's counts. The directory a killed server left
    behind (its pid is in the name) is removed at the next start.
    """
    _remove_orphans()
    path = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
    inherited = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if inherited is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = inherited
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans() -> None:
    """Remove the metrics directories of servers that no longer run (killed before cleanup)."""
    pattern = re.compile(rf"{re.escape(_DIR_PREFIX)}(\d+)-")
    for path in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        match = pattern.match(path.name)
        if match is None or not path.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)  # another user's: not ours to remove, left


def _alive(pid: int) -> bool:
    """Whether a process runs (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class ApiMetrics:
    """The API's metrics; ``registry`` is what ``/metrics`` exposes.

    In one process that is the registry the metrics are in. In multiprocess mode the metrics
    are in no registry (their values go to this process's files) and ``registry`` only holds
    a collector that reads every process's files at each scrape: the metrics registered as
    well would be counted twice.

    There are no gauges. One added here needs the ``multiprocess_mode`` that fits it (``max``
    or ``mostrecent`` for one value of the whole server, ``sum`` for a total), else each
    worker's value is exposed with a ``pid`` label. The ``live*`` modes drop a worker's value
    only when ``mark_process_dead`` is called for it, and uvicorn has no hook for a worker's
    exit (its supervisor replaces a dead worker on its own): a worker that ended would count on.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_mode()
        if self.multiprocess:
            self.registry.register(_OwnFamilies(MultiProcessCollector(None)))
        registry = None if self.multiprocess else self.registry
        counter = partial(Counter, registry=registry)
        histogram = partial(Histogram, buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = counter(
            "recsys_requests", "HTTP requests", ["endpoint", "method", "status"]
        )
        self.latency = histogram("recsys_request_seconds", "Request latency", ["endpoint"])
        self.stage_latency = histogram(
            "recsys_stage_seconds", "Latency of a recommendation stage", ["stage"]
        )
        self.fallbacks = counter("recsys_fallbacks", "Answers not from the model", ["reason"])

    def observe_recommendation(self, timings_ms: dict[str, float], fallback: bool,
                               degraded: bool) -> None:  # fmt: skip
        for stage, ms in timings_ms.items():
            self.stage_latency.labels(stage=stage).observe(ms / 1e3)
        if degraded:
            self.fallbacks.labels(reason="degraded").inc()
        elif fallback:
            self.fallbacks.labels(reason="unknown_user").inc()


class _OwnFamilies:
    """The API's metric families (``recsys_*``) of the multiprocess files.

    The files hold every metric of each worker, Feast's too (``feast_*``: its feature server's,
    all zero here) once ``feast.metrics`` is imported; ``/metrics`` exposes what one worker
    exposes on its own.
    """

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.collector.collect() if family.name.startswith(PREFIX))


class MetricsMiddleware:
    """Pure ASGI middleware: times every HTTP request by route template and status.

    Each response carries the server's own time to its first byte in a ``Server-Timing``
    header (``app;dur=<ms>``), so a client can tell server time from network and client time.

    (Starlette's ``BaseHTTPMiddleware`` costs about a millisecond a request here, the same
    order as the whole recommendation path.)
    """

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                took_ms = (time.perf_counter() - started) * 1e3
                headers = [*message.get("headers", ()),
                           (b"server-timing", f"app;dur={took_ms:.3f}".encode())]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
