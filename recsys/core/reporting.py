"""How the benchmarks hand over their results: JSON on stdout, and in a file when asked.

One place, so that every script in ``benchmarks/`` writes the same shape the same way (the
files under ``benchmarks/results/`` are these outputs, committed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_report(report: dict[str, Any], out: Path | None) -> None:
    """Print ``report`` as indented JSON; also write it to ``out`` (parents created)."""
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
