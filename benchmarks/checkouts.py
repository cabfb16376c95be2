"""Other commits of this repository, checked out beside it, for A/B benchmarks in one sitting.

Absolute times differ 2-3x between machines of one kind (and between sittings on one
machine), so a speed claim is a ratio of two sides run one after the other. A side is either
this working tree or a git ref checked out in a temporary worktree; each runs with this
checkout's ``.venv`` and ``PYTHONPATH`` pointing at its own tree, so its code (not the
installed one) is what the subprocess imports.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def short_ref(ref: str) -> str:
    """``ref``'s abbreviated commit hash (raises naming the ref when git does not know it)."""
    done = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"git does not know the ref {ref!r}: {done.stderr.strip()}")
    return done.stdout.strip()


def working_tree_dirty() -> bool:
    """Whether tracked files differ from HEAD (then "this" is HEAD plus changes)."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                            capture_output=True, text=True).stdout  # fmt: skip
    return bool(status.strip())


@contextmanager
def worktrees(refs: dict[str, str], under: Path) -> Iterator[dict[str, Path]]:
    """Each side name -> a detached worktree of its ref below ``under``, removed on exit."""
    trees: dict[str, Path] = {}
    try:
        for side, ref in refs.items():
            tree = under / side
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=REPO,
                           check=True, capture_output=True)  # fmt: skip
            trees[side] = tree
        yield trees
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           capture_output=True)  # fmt: skip
