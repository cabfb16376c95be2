"""The event log: numbered, shared by processes, rotated by size, robust to a torn line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from recsys.core.event_log import EventLog

pytestmark = pytest.mark.unit


def _append(folder: Path, writer: int, batches: int) -> None:
    log = EventLog(folder, max_bytes=4096)
    for b in range(batches):
        with log.turn():
            log.append([{"event_id": f"{writer}-{b}-{i}", "user_id": "u"} for i in range(3)])


def test_processes_share_one_numbering_and_the_ids_of_retries(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append, args=(tmp_path, w, 20)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    log = EventLog(tmp_path, max_bytes=4096)
    records = list(log.records(files=1000))
    assert [r["seq"] for r in records] == list(range(1, 181))  # no gap, no repeat, in order
    assert len({r["event_id"] for r in records}) == 180
    assert len(log.segments()) > 2  # rotated by size, every file kept
    with log.turn():
        assert log.last_seq == 180
        # retries are recognised within the current and the previous file
        window = {r["event_id"] for r in log.records(files=2)}
        assert window and window <= log.event_ids


def test_a_line_torn_by_a_crash_loses_nothing_after_it(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    with log.turn():
        log.append([{"event_id": "a"}])
    with open(log.path, "a") as f:
        f.write('{"event_id": "torn", "se')  # the crash came mid-write
    restarted = EventLog(tmp_path)
    with restarted.turn():
        assert restarted.event_ids == {"a"}
        [record] = restarted.append([{"event_id": "b"}])
    assert record["seq"] == 2
    assert [r["event_id"] for r in EventLog(tmp_path).records()] == ["a", "b"]
    assert json.loads(log.path.read_text().splitlines()[-1])["event_id"] == "b"


def test_fold_counts_the_visit_and_files_signal_events_as_history() -> None:
    """A view within the visit gap extends the visit; one after it starts a new visit at 1.
    In a click-only shop (signal ``view``) views also join the history list."""
    from datetime import UTC, datetime, timedelta

    from serving.events import fold

    then = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    row = {"recent_views": ["a"], "recent_purchases": ["z"], "session_events": 4,
           "applied_seq": 7, "event_timestamp": then}  # fmt: skip

    def view(seq: int, item: str, minutes: float) -> dict:
        at = (then + timedelta(minutes=minutes)).isoformat()
        return {"seq": seq, "user_id": "u", "item_id": item, "event_type": "view", "timestamp": at}

    same_visit = fold([view(8, "b", 10), view(7, "old", 11)], {"u": row})
    assert same_visit["session_events"].tolist() == [5]  # seq 7 is in the row already
    assert same_visit["recent_views"].tolist() == [["b", "a"]]
    assert same_visit["recent_purchases"].tolist() == [["z"]]  # purchases are the signal
    later = fold([view(8, "b", 90), view(9, "c", 95)], {"u": row}, signal="view")
    assert later["session_events"].tolist() == [2]  # a new visit: two events
    assert later["recent_purchases"].tolist() == [["c", "b", "z"]]
    assert later["applied_seq"].tolist() == [9]
    first = fold([view(1, "b", 0)], {})
    assert first["session_events"].tolist() == [1]
