"""The A/B benchmarks' checkouts: a ref beside this tree, gone afterwards even on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from checkouts import short_ref, worktrees  # noqa: E402

pytestmark = pytest.mark.unit

needs_git = pytest.mark.skipif(
    subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0,
    reason="not a git checkout",
)


def _registered() -> str:
    return subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


@needs_git
def test_worktree_holds_the_ref_and_is_removed_after(tmp_path: Path) -> None:
    head = short_ref("HEAD")
    with worktrees({"base": head}, tmp_path) as trees:
        tree = trees["base"]
        assert (tree / "pyproject.toml").is_file()
        checked_out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                                     capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert checked_out.strip() == head
        assert str(tree) in _registered()
    assert not tree.exists()
    assert str(tree) not in _registered()


@needs_git
def test_worktree_is_removed_when_the_benchmark_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), worktrees({"base": "HEAD"}, tmp_path) as trees:
        tree = trees["base"]
        raise RuntimeError("a round failed")
    assert not tree.exists()
    assert str(tree) not in _registered()


@needs_git
def test_unknown_ref_names_it() -> None:
    with pytest.raises(SystemExit, match="no-such-ref-here"):
        short_ref("no-such-ref-here")
