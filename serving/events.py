"""Durable intake of shop events posted to the API, applied exactly once to the online store.

A batch is appended to the event log and fsynced before the API answers, so an accepted event
survives a crash; then each user's activity row is folded forward and pushed to Feast's
``user_activity_push`` source, so that the next recommendation already knows it (bought items
are excluded, the user tower's history includes them). The log is the record to fold into the
next import.

Exactly once, across worker processes, crashes and a broken online store: a turn on the log is
exclusive (one writer at a time, all processes), each row remembers the ``seq`` of the last
event folded into it (``applied_seq``), and the log's watermark says up to where every event is
in the store. A turn first folds whatever lies past the watermark (a push that failed, in any
process, or one cut short by a crash), then its own events; an event a row already has is
skipped by its ``seq``. The API also takes a turn at start-up, so a crash between the log and
the push is repaired before the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from recsys.core.event_log import EventLog
from recsys.core.schema import RECENT_ACTIVITY
from serving.online import OnlineStore

log = logging.getLogger(__name__)

#: A visit ends after this long without an event (``SessionSettings.visit_gap_minutes``).
VISIT_GAP = pd.Timedelta(minutes=30)
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
    session_id: str | None = Field(default=None, min_length=1, max_length=256)
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


class EventsNotApplied(RuntimeError):
    """Events are logged (they will be applied) but the online store refused them for now."""


def stamp(events: Sequence[Event]) -> list[Event]:
    """Events with a UTC timestamp (received time when the client sent none)."""
    now = datetime.now(UTC)
    return [
        e.model_copy(update={"timestamp": (e.timestamp or now).astimezone(UTC)}) for e in events
    ]


def fold(
    records: Iterable[dict[str, Any]],
    current: dict[str, dict[str, Any]],
    signal: str = "purchase",
    visit_gap: pd.Timedelta = VISIT_GAP,
) -> pd.DataFrame:
    """New ``user_activity`` rows: each user's row with the logged ``records`` it lacks folded in.

    ``recent_purchases`` takes the items of ``signal`` events (purchases; views in a click-only
    shop, whose histories are views), as ``recsys features`` fills it. ``session_events``
    counts the events of the current visit: an event more than ``visit_gap`` after the one
    before it (the row's ``event_timestamp``) starts a new visit at 1.

    ``current`` maps user id -> the row's values (recent_views, recent_purchases,
    session_events, applied_seq, event_timestamp; all None for a user never seen). A record
    whose ``seq`` is not above the row's ``applied_seq`` is already in it and skipped; the
    others are folded in time order (then log order). Users with nothing to fold get no row.
    """
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if int(r["seq"]) > int(current.get(r["user_id"], {}).get("applied_seq") or 0):
            by_user.setdefault(r["user_id"], []).append(r)
    rows = []
    for user, evs in by_user.items():
        evs.sort(key=lambda r: (pd.Timestamp(r["timestamp"]), r["seq"]))
        now = current.get(user, {})
        views = list(now.get("recent_views") or [])
        buys = list(now.get("recent_purchases") or [])
        visit = int(now.get("session_events") or 0)
        last = now.get("event_timestamp")
        for e in evs:
            at = pd.Timestamp(e["timestamp"])
            visit = 1 if last is None or at - pd.Timestamp(last) > visit_gap else visit + 1
            last = at
            if e["event_type"] == "view":
                views = [e["item_id"], *[v for v in views if v != e["item_id"]]]
            if e["event_type"] == signal:
                buys = [e["item_id"], *buys]
        rows.append({"user_id": user, "event_timestamp": pd.Timestamp(evs[-1]["timestamp"]),
                     "recent_views": views[:RECENT_ACTIVITY],
                     "recent_purchases": buys[:RECENT_ACTIVITY],
                     "session_events": visit,
                     "applied_seq": max(int(e["seq"]) for e in evs)})  # fmt: skip
    return pd.DataFrame(rows)


class EventIntake:
    """Logs posted events and applies them to the online store, exactly once (see above)."""

    def __init__(
        self,
        log_: EventLog,
        online: OnlineStore,
        signal: str = "purchase",
        visit_gap: pd.Timedelta = VISIT_GAP,
    ) -> None:
        """``signal``: the event type the served run learned from; ``visit_gap``: when a
        visit ends (see :func:`fold`)."""
        self.log = log_
        self.online = online
        self.signal = signal
        self.visit_gap = visit_gap

    def record(self, events: Sequence[Event]) -> tuple[int, int]:
        """Log and apply a batch; return (events acknowledged, of which duplicates).

        An event whose ``event_id`` is in the log already (a retry) is acknowledged and not
        logged or applied again. Raises :class:`EventsNotApplied` when the events are logged
        but the online store failed: they are applied by a later turn.
        """
        with self.log.turn():
            fresh, seen = [], set()  # seen: ids earlier in this batch
            for e in events:
                if e.event_id is not None:
                    if e.event_id in self.log.event_ids or e.event_id in seen:
                        continue
                    seen.add(e.event_id)
                fresh.append(e)
            records = [e.model_dump(mode="json") for e in stamp(fresh)]
            self._apply(self.log.append(records) if records else [])
        return len(events), len(events) - len(fresh)

    def replay(self) -> int:
        """Apply what the log holds past its watermark (at start-up); return the events
        folded. A failing online store is reported, not raised: the next turn tries again."""
        with self.log.turn():
            try:
                return self._apply([])
            except EventsNotApplied as exc:
                log.error("%s", exc)
                return 0

    def _apply(self, logged: list[dict[str, Any]]) -> int:
        """Fold into the store the events past the watermark, then ``logged`` (within a turn)."""
        watermark, last = self.log.applied_through, self.log.last_seq
        behind = watermark < last - len(logged)  # a failed push or a crash left events out
        records = list(self.log.records_after(watermark)) if behind else logged
        if not records:
            return 0
        try:
            current = self.online.activity(sorted({r["user_id"] for r in records}))
            rows = fold(records, current, self.signal, self.visit_gap)
            if len(rows):
                self.online.push(rows)
        except Exception as exc:
            raise EventsNotApplied(
                f"events up to #{last} are logged but not yet in the online store "
                f"({type(exc).__name__}: {exc}); they are applied once it answers again"
            ) from exc
        self.log.applied_through = last
        if behind:
            log.warning("applied %d logged events past #%d", len(records) - len(logged), watermark)
        return len(records)
