"""Durable intake of shop events posted to the API.

An event is appended to a JSON-lines log and fsynced before the API answers, so an accepted
event survives a crash; then it is pushed to Feast's ``user_activity_push`` source, so that the
next recommendation for that user already knows it (bought items are excluded, the user tower's
history includes them). The log is the record to fold into the next import.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from recsys.core.schema import RECENT_ACTIVITY

#: Event times the feature store can hold (pandas' nanosecond timestamps end in 2262).
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


class Event(BaseModel):
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Optional, unique per event: a retry with the same id is acknowledged and "
        "not applied twice.",
    )
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    event_type: Literal["view", "add_to_cart", "purchase"]
    timestamp: datetime | None = Field(
        default=None, description="Default: when received. Between 1970 and 2200 (UTC)."
    )
    session_id: str | None = None
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        """In UTC, and within what the feature store can hold (an offset on 0001-01-01 or
        9999-12-31 overflows the conversion)."""
        if value is None:
            return None
        try:
            utc = value.astimezone(UTC)
        except (OverflowError, ValueError):
            utc = None
        if utc is None or not EARLIEST <= utc < LATEST:
            raise ValueError(f"must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")
        return utc


class EventLog:
    """Append-only JSON lines, one fsync per batch (thread-safe within a process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def event_ids(self) -> set[str]:
        """The ``event_id`` of every logged event: what a restarted API must not apply again.
        A torn last line (a crash mid-write) is skipped."""
        ids: set[str] = set()
        if not self.path.exists():
            return ids
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    event_id = json.loads(line).get("event_id")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if event_id:
                    ids.add(event_id)
        return ids

    def append(self, events: Sequence[Event]) -> None:
        lines = "".join(json.dumps(e.model_dump(mode="json")) + "\n" for e in events)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def stamp(events: Sequence[Event]) -> list[Event]:
    """Events with a UTC timestamp (received time when the client sent none)."""
    now = datetime.now(UTC)
    return [
        e.model_copy(update={"timestamp": (e.timestamp or now).astimezone(UTC)}) for e in events
    ]


def activity_rows(events: Sequence[Event], current: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """New ``user_activity`` rows: each user's online row with these events folded in.

    ``current`` maps user id -> the user's current online values (recent_views,
    recent_purchases, session_events), possibly all None for a user never seen.
    """
    rows = []
    by_user: dict[str, list[Event]] = {}
    for e in sorted(events, key=lambda e: e.timestamp):
        by_user.setdefault(e.user_id, []).append(e)
    for user, evs in by_user.items():
        now = current.get(user, {})
        views = list(now.get("recent_views") or [])
        buys = list(now.get("recent_purchases") or [])
        for e in evs:
            if e.event_type == "view":
                views = [e.item_id, *[v for v in views if v != e.item_id]]
            elif e.event_type == "purchase":
                buys = [e.item_id, *buys]
        rows.append({"user_id": user, "event_timestamp": evs[-1].timestamp,
                     "recent_views": views[:RECENT_ACTIVITY],
                     "recent_purchases": buys[:RECENT_ACTIVITY],
                     "session_events": int(now.get("session_events") or 0) + len(evs)})  # fmt: skip
    return pd.DataFrame(rows)
