"""The API's handle on Feast's online store: one user's row, activity writes, and self-healing.

A ``FeatureStore`` keeps its online store's connection for the life of the process. When the
store underneath is damaged and repaired (an SQLite file truncated and restored, a Redis
failover), that connection can stay broken: the API answered degraded until restarted. So every
failure marks the handle, and the first use ``reopen_after_s`` after the first failure opens a
new ``FeatureStore`` (a new connection) before trying again; while the store stays broken, that
costs one attempt a second, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import pandas as pd

from recsys.core.feast_store import open_store
from recsys.core.online_features import OnlineRowReader, read_rows
from recsys.core.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The API's contract with the feature repo: what a recommendation reads of a user.
SERVICE = "user_serving"
#: The real-time view the API writes, and the fields it folds events into.
ACTIVITY_VIEW, ACTIVITY_PUSH = "user_activity", "user_activity_push"
ACTIVITY = ("recent_views", "recent_purchases", "session_events", "applied_seq")
#: The entity the health check writes and reads: no shopper has this id.
PROBE_USER = "__health__"


class OnlineStore:
    """Reads and writes of the online store that survive the store's repair."""

    def __init__(self, settings: Settings, reopen_after_s: float = 1.0) -> None:
        self.settings = settings
        self.reopen_after_s = reopen_after_s
        self._reopen_lock = threading.Lock()
        self._retry_at: float | None = None  # when to reopen (None: healthy)
        self.store, self.rows = self._open()

    def _open(self) -> tuple[Any, OnlineRowReader]:
        store = open_store(self.settings)
        rows = OnlineRowReader(store, SERVICE, "user_id")
        rows.read("__warmup__")
        return store, rows

    @property
    def kind(self) -> str:
        return str(self.store.config.online_store.type)

    def _call(self, fn: Callable[[], T]) -> T:
        self._heal()
        try:
            return fn()
        except Exception:
            if self._retry_at is None:  # later failures must not push the reopen back
                self._retry_at = time.monotonic() + self.reopen_after_s
            raise

    def _heal(self) -> None:
        retry_at = self._retry_at
        if retry_at is None or time.monotonic() < retry_at:
            return
        with self._reopen_lock:
            if self._retry_at != retry_at:  # another thread reopened it meanwhile
                return
            try:
                self.store, self.rows = self._open()
            except Exception as exc:
                self._retry_at = time.monotonic() + self.reopen_after_s
                log.warning("online store still failing (%s): retrying in %.0f s", exc,
                            self.reopen_after_s)  # fmt: skip
                return
            self._retry_at = None
            log.warning("online store reopened after a failure")

    def read_timed(self, user_id: str) -> tuple[dict[str, Any], dict[str, datetime | None]]:
        """The user's row of :data:`SERVICE` (``None`` values when unknown) and when each
        view's row was written (see ``OnlineRowReader``)."""
        return self._call(lambda: self.rows.read_timed(user_id))

    def activity(self, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each user's :data:`ACTIVITY` values and ``event_timestamp`` (when the row was
        written; ``None`` values for a user never seen)."""

        def read() -> dict[str, dict[str, Any]]:
            view = self.store.get_feature_view(ACTIVITY_VIEW)
            provider = self.store._get_provider()  # the public API returns no event times
            out: dict[str, dict[str, Any]] = {}
            for start in range(0, len(users), 1000):
                chunk = users[start : start + 1000]
                rows = read_rows(provider, self.store.config, view, "user_id", chunk,
                                 list(ACTIVITY))  # fmt: skip
                for user, (written, values) in zip(chunk, rows, strict=True):
                    out[user] = values | {"event_timestamp": written}
            return out

        return self._call(read)

    def push(self, rows: pd.DataFrame) -> None:
        """Write ``user_activity`` rows (all of :data:`ACTIVITY`, ``user_id`` and time)."""
        from feast.data_source import PushMode

        self._call(lambda: self.store.push(ACTIVITY_PUSH, rows, to=PushMode.ONLINE))

    def probe(self) -> dict[str, Any]:
        """Write a row and read it back, as events and recommendations do; never raises."""
        started = time.perf_counter()
        mark = time.time_ns()
        row = {"user_id": PROBE_USER, "event_timestamp": pd.Timestamp.now(tz="UTC"),
               "recent_views": [], "recent_purchases": [], "session_events": 0,
               "applied_seq": mark}  # fmt: skip
        try:
            self.push(pd.DataFrame([row]))
            seen = self.activity([PROBE_USER])[PROBE_USER]["applied_seq"]
            if seen != mark:
                raise RuntimeError(f"wrote {mark} and read back {seen}")
        except Exception as exc:  # health must report, never raise
            return {"ok": False, "online_store": self.kind, "error": f"{type(exc).__name__}: {exc}"}
        latency = round((time.perf_counter() - started) * 1e3, 3)
        return {"ok": True, "online_store": self.kind, "latency_ms": latency}
