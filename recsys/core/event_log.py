"""The durable record of the events the API accepted: JSON lines, numbered, rotated by size.

Every accepted event gets a sequence number (``seq``, 1, 2, ... across the whole log) and is
fsynced before the API answers. The number is what makes the online store's state checkable:
each user's online activity row records the ``seq`` of the last event folded into it, so that
an API started after a crash folds exactly the logged events that row has not seen (see
``serving/events.py``), and never one twice.

Several API worker processes append to one log: they take turns through a lock file, and each
reads what the others appended since its last turn (:meth:`EventLog.catch_up`), so sequence
numbers and the ``event_id`` of retries are shared. The log also keeps a watermark
(:attr:`EventLog.applied_through`): every event up to it is known to be in the online store, so
what lies past it (a failed push in any process, a crash) is what to fold again, and the per-row
``seq`` keeps that from applying an event twice. Past ``max_bytes`` the current file
``events.jsonl`` is renamed ``events-<first seq>.jsonl`` and a new one begins; rotated files are
kept, as the record to fold into the next import. Retries are recognised within the current and
the previous file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

CURRENT = "events.jsonl"
WATERMARK = "applied"


class EventLog:
    """Append-only, numbered JSON lines in ``folder`` (thread- and process-safe)."""

    def __init__(self, folder: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / CURRENT
        self.max_bytes = max_bytes
        self._thread_lock = threading.Lock()
        self._file_lock = FileLock(self.folder / "events.lock")
        self.last_seq = 0
        self.event_ids: set[str] = set()
        # where this process has read the current file up to (its inode and byte offset)
        self._read_at: tuple[int, int] = (0, 0)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Exclusive use of the log (and of whatever the holder does with the online store),
        among this process's threads and other processes; caught up with their appends."""
        with self._thread_lock, self._file_lock:
            self.catch_up()
            yield

    def catch_up(self) -> None:
        """Read the sequence numbers and event ids appended since this process last looked
        (all of the last two files on the first call)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            stat = None
        inode, offset = self._read_at
        if stat is None or stat.st_ino != inode:  # first look, or the file was rotated
            segments = self.segments()
            for path in segments[-2:-1] if stat is not None else segments[-1:]:
                self._scan(path, 0)
            offset = 0
        if stat is not None:
            self._read_at = (stat.st_ino, self._scan(self.path, offset))

    def _scan(self, path: Path, offset: int) -> int:
        """Note seq and event_id of each whole line from ``offset``; return where it ended."""
        with open(path, "rb") as f:
            f.seek(offset)
            for line in f:
                if not line.endswith(b"\n"):  # torn by a crash mid-write, or being written
                    break
                offset += len(line)
                record = _parse(line)
                if record is None:
                    continue
                self.last_seq = max(self.last_seq, int(record.get("seq") or 0))
                if record.get("event_id"):
                    self.event_ids.add(record["event_id"])
        return offset

    def append(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Number, write and fsync ``records`` (call within :meth:`turn`); return them with
        their ``seq``."""
        numbered = [{**r, "seq": self.last_seq + i} for i, r in enumerate(records, start=1)]
        data = "".join(json.dumps(r) + "\n" for r in numbered).encode()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size + len(data) > self.max_bytes and size:
            self._rotate()
        elif size > self._read_at[1]:
            # a line torn by a crash mid-write (nobody else writes during a turn): end it, so
            # that it does not swallow the first of these records
            data = b"\n" + data
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            self._read_at = (os.fstat(f.fileno()).st_ino, f.tell())
        self.last_seq += len(numbered)
        self.event_ids.update(r["event_id"] for r in numbered if r.get("event_id"))
        return numbered

    @property
    def applied_through(self) -> int:
        """The ``seq`` up to which every event is in the online store (within a turn)."""
        try:
            return int((self.folder / WATERMARK).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @applied_through.setter
    def applied_through(self, seq: int) -> None:
        # not fsynced: a watermark lost in a crash only makes the next turn fold again what
        # the online rows already have, and their own seq makes that a no-op
        tmp = self.folder / f".{WATERMARK}.tmp"
        tmp.write_text(str(seq))
        tmp.replace(self.folder / WATERMARK)

    def records_after(self, seq: int) -> Iterator[dict[str, Any]]:
        """Whole records with a ``seq`` above ``seq``, oldest first, from every file that may
        hold one."""
        segments = self.segments()
        start = len(segments) - 1
        while start > 0 and _first_seq(segments[start]) > seq + 1:
            start -= 1
        for path in segments[max(start, 0) :]:
            for record in self._records(path):
                if int(record.get("seq") or 0) > seq:
                    yield record

    def _rotate(self) -> None:
        first = next(self._records(self.path), {}).get("seq", self.last_seq)
        self.path.rename(self.folder / f"events-{int(first):012d}.jsonl")
        self.event_ids = {r["event_id"] for r in self.records(files=1) if r.get("event_id")}
        _fsync_dir(self.folder)

    def segments(self) -> list[Path]:
        """The log's files, oldest first (rotated ones, then the current one)."""
        rotated = sorted(self.folder.glob("events-*.jsonl"))
        return [*rotated, self.path] if self.path.exists() else rotated

    def records(self, files: int = 2) -> Iterator[dict[str, Any]]:
        """Whole records of the newest ``files`` files, oldest first."""
        for path in self.segments()[-files:]:
            yield from self._records(path)

    @staticmethod
    def _records(path: Path) -> Iterator[dict[str, Any]]:
        with open(path, "rb") as f:
            for line in f:
                record = _parse(line) if line.endswith(b"\n") else None
                if record is not None:
                    yield record


def _first_seq(path: Path) -> int:
    """The first ``seq`` of a log file: in a rotated file's name, else on its first line."""
    if path.name != CURRENT:
        return int(path.stem.removeprefix("events-"))
    first = next(EventLog._records(path), None)
    return int(first.get("seq") or 0) if first else 0


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
