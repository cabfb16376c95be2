"""Prometheus metrics of the API: requests, latency per endpoint and per stage, fallbacks.

Each app gets its own registry, so several apps in one process (tests, workers) never clash.
"""

from __future__ import annotations

import time
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Histogram

# Buckets sized for a service whose median is about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.025, 0.05, 0.1, 0.25, 1.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
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
