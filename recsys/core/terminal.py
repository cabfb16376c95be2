"""The terminal of every command: one console, one progress bar per long step, and libraries
kept quiet.

On a terminal a bar animates with its rate and ETA (rich). Piped to a file or CI, where an
animated bar would write a line per update, each bar prints one line when it ends (what it
did, how long, how fast), and text is never hard-wrapped: a long path or a ``curl`` line stays
one line a reader can copy. Tables fold a long name onto a second line instead of cutting it.

Libraries' own output (Ray's and Ray Data's logs, DuckDB's progress bar, warnings the platform
expects) is sent to the data root's log folder or silenced where it starts, unless ``-v``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

T = TypeVar("T")

#: Width of piped output when ``COLUMNS`` does not say: wide enough for every table here.
PIPED_WIDTH = 120
#: Piped, a bar that ended sooner than this prints nothing (only long steps earn a line).
LINE_BAR_MIN_SECONDS = 2.0


def _console() -> Console:
    probe = Console()
    if probe.is_terminal:
        return probe
    width = int(os.environ.get("COLUMNS", 0) or PIPED_WIDTH)
    return Console(width=width, soft_wrap=True)


console = _console()

_progress: Progress | None = None  # the live display while a bar runs (bars may nest)


class Bar(Protocol):
    """What :func:`progress_bar` yields."""

    def advance(self, n: float = 1) -> None: ...


class _RateColumn(ProgressColumn):
    """Items per second in the bar's own unit ("1,204 rows/s")."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


@contextmanager
def progress_bar(
    description: str, total: int | None, unit: str = "it", enabled: bool = True
) -> Iterator[Bar]:
    """A bar for one long step: call ``advance(n)`` on what this yields. Piped, the bar prints
    one line when the step ends; ``enabled`` False: a bar that shows nothing."""
    global _progress
    if not enabled:
        yield _NoBar()
        return
    if not console.is_terminal:
        handle = _LineBar(description, total, unit)
        yield handle
        handle.finish()
        return
    owner = _progress is None
    if owner:
        _progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        _progress.start()
    progress = _progress
    assert progress is not None
    task = progress.add_task(description, total=total, unit=unit)
    try:
        yield _TaskBar(progress, task)
    finally:
        if owner:
            progress.stop()
            _progress = None
        else:
            progress.remove_task(task)


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass


class _TaskBar:
    """One task of the live display."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def advance(self, n: float = 1) -> None:
        self.progress.advance(self.task, n)


class _LineBar:
    """A bar that prints one summary line at the end: a log gets the result, not the frames."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0.0
        self.started = time.perf_counter()

    def advance(self, n: float = 1) -> None:
        self.done += n

    def finish(self) -> None:
        seconds = time.perf_counter() - self.started
        if seconds < LINE_BAR_MIN_SECONDS:
            return  # a quick step: its stage's own line says enough
        rate = self.done / seconds if seconds > 0 else 0.0
        of = f"/{self.total:,}" if self.total is not None else ""
        console.print(
            f"  {self.description}: {self.done:,.0f}{of} {self.unit} in {seconds:.1f}s "
            f"({rate:,.{0 if rate >= 10 else 1}f} {self.unit}/s)",
            highlight=False,
        )


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
) -> Iterator[T]:
    """``items`` with a progress bar (``total`` defaults to ``len(items)`` when it has one);
    ``enabled`` False: the items alone (a library call that should stay silent)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, unit, enabled) as bar:
        for item in items:
            yield item
            bar.advance(1)


def table(title: str, first: str, *numeric: str) -> Table:
    """A table whose ``first`` column names the row and the others are right-aligned numbers;
    no column is ever cut short: a name too long for the width folds onto the next line."""
    out = Table(title=title)
    out.add_column(first, overflow="fold")
    for name in numeric:
        out.add_column(name, justify="right", overflow="fold")
    return out


# --------------------------------------------------------------------------- libraries
#: Warnings the platform expects from its libraries, silenced where they start: (category,
#: module regex). -v shows them.
EXPECTED_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"ray(\.|$)"),  # Ray Data's context copies deprecated fields
    (FutureWarning, r"ray(\.|$)"),
    (DeprecationWarning, r"feast(\.|$)"),
    (DeprecationWarning, r"great_expectations(\.|$)"),
    (UserWarning, r"great_expectations(\.|$)"),
    (DeprecationWarning, r"(pandas|pyarrow|ibis|dask|transformers|torch)(\.|$)"),
    (FutureWarning, r"(pandas|feast|transformers|torch|great_expectations)(\.|$)"),
)


_log_dir: Path | None = None  # where quiet_libraries sends Ray's logs (None: not quieted)


def quiet_libraries(log_dir: Path | None, verbose: bool = False) -> None:
    """Keep libraries' output off the console unless ``verbose``: the expected warnings are
    ignored at their source modules, and Ray's and Ray Data's Python logs go to files under
    ``log_dir`` (see :func:`note_ray_session`)."""
    global _log_dir
    os.environ.setdefault("FEAST_USAGE", "False")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if verbose:
        return
    for category, module in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
    # Ray workers are other processes: they read the filters from the environment.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    # transformers draws a "Loading weights" bar for every model it loads (read at import).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if log_dir is None:
        return
    _log_dir = log_dir
    # Ray Data reports progress as log lines when stdout is not a terminal (a block of six
    # lines every few seconds) and configures its logger itself on every dataset; its config
    # file is the one way in. Its lines go to ray-data.log, nothing to the console.
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                              "filename": str(log_dir / "ray-data.log"), "delay": True}},
        "loggers": {"ray.data": {"level": "INFO", "handlers": ["file"], "propagate": False}},
    }  # fmt: skip
    if "RAY_DATA_LOGGING_CONFIG" not in os.environ:  # a user's own config wins
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "ray-data-logging.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        os.environ["RAY_DATA_LOGGING_CONFIG"] = str(path)
    ray_file = logging.FileHandler(log_dir / "ray.log", delay=True)
    ray_file.setFormatter(logging.Formatter(config["formatters"]["plain"]["format"]))
    for name in ("ray", "ray.train", "ray.tune"):
        logger = logging.getLogger(name)
        logger.handlers = [ray_file]
        logger.propagate = False


def ray_logs_quieted() -> bool:
    """Whether :func:`quiet_libraries` took Ray's loggers (``ray.init`` must then leave them)."""
    return _log_dir is not None


def note_ray_session(session_logs: Path) -> None:
    """Link Ray's session log folder (under Ray's short temporary path, which its sockets need)
    into the data root's log folder, and say once where Ray's logs are."""
    if _log_dir is None:
        return
    link = _log_dir / "ray-session"
    with contextlib.suppress(OSError):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(session_logs, target_is_directory=True)
    console.print(f"  Ray started; its logs: {_log_dir}", style="dim", highlight=False)
