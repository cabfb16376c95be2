"""The terminal: piped output gets one line per long step, tables never cut a name, and the
library quieting routes Ray Data's log lines to the data root."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
from rich.console import Console

from recsys.core import terminal


@pytest.fixture
def piped(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The module's console writing to a string, as when stdout is a file (60 columns)."""
    out = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=out, width=60, soft_wrap=True))
    return out


def test_a_piped_bar_prints_one_line_with_its_rate_only_when_long(
    piped: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert list(terminal.track(range(5), "quick", unit="rows")) == [0, 1, 2, 3, 4]
    assert piped.getvalue() == ""  # under LINE_BAR_MIN_SECONDS: the stage's own line suffices
    monkeypatch.setattr(terminal, "LINE_BAR_MIN_SECONDS", 0.0)
    with terminal.progress_bar("encode", 1200, "items") as bar:
        for _ in range(4):
            bar.advance(300)
    lines = piped.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("  encode: 1,200/1,200 items in ") and lines[0].endswith("items/s)")
    assert list(terminal.track(iter("ab"), "no length", enabled=False)) == ["a", "b"]


def test_tables_fold_long_names_instead_of_cutting_them(piped: io.StringIO) -> None:
    table = terminal.table("models", "model", "recall@10", "ndcg@10", "coverage@10")
    name = "popularity_recent_within_the_last_thirty_days"
    table.add_row(name, "0.1234", "0.0567", "0.3300")
    terminal.console.print(table)
    text = piped.getvalue()
    assert "…" not in text
    first_cells = [line.split("│")[1].strip() for line in text.splitlines() if "│" in line]
    assert "".join(first_cells) == name  # folded over lines, every character there
    assert max(len(line) for line in text.splitlines()) <= 60


def test_long_lines_are_not_hard_wrapped_when_piped(piped: io.StringIO) -> None:
    curl = "curl -s -X POST 'http://127.0.0.1:8000/recommendations' -d '" + "x" * 80 + "'"
    terminal.console.print(curl, highlight=False)
    assert piped.getvalue().strip() == curl


def test_quiet_libraries_sends_ray_data_logs_to_the_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RAY_DATA_LOGGING_CONFIG", "PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(terminal, "_log_dir", None)
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
             for n in ("ray", "ray.train", "ray.tune")}  # fmt: skip
    try:
        terminal.quiet_libraries(tmp_path / "logs")
        assert terminal.ray_logs_quieted()
        from ray.data._internal.logging import configure_logging

        configure_logging()  # what Ray Data does before every dataset runs
        logging.getLogger("ray.data").info("Progress will be logged")
        text = (tmp_path / "logs" / "ray-data.log").read_text()
        assert "Progress will be logged" in text
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        for n, (handlers, propagate) in saved.items():
            logging.getLogger(n).handlers, logging.getLogger(n).propagate = handlers, propagate
        monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
        from ray.data._internal.logging import configure_logging

        configure_logging()  # back to Ray Data's defaults for the tests after this one
