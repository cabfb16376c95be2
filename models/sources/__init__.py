"""Candidate sources by name: the registry the generator, ranker and API loop over.

Built-in sources register themselves when this package is imported, in the order they run;
another source registers with :func:`register` from its own module (see ``base.py``) and is
enabled by an entry under ``sources:`` in the settings.
"""

from __future__ import annotations

from typing import TypeVar

from models.sources.base import (
    MISSING_RANK,
    CandidateSource,
    Proposal,
    Request,
    SourceData,
    Task,
)
from recsys.core.settings import Settings

S = TypeVar("S", bound=type[CandidateSource])
REGISTRY: dict[str, type[CandidateSource]] = {}


def register(cls: S) -> S:
    """Make ``cls`` available under ``cls.name`` (a class decorator)."""
    other = REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"two candidate sources are named {cls.name!r}: {other} and {cls}")
    REGISTRY[cls.name] = cls
    return cls


def enabled_sources(
    settings: Settings, task: Task = "user"
) -> list[tuple[type[CandidateSource], object]]:
    """(class, validated settings) of every enabled source of ``task``, in registry order.

    A ``sources:`` entry that names no registered source is an error rather than silently
    ignored: a typo would otherwise drop a source from the ranker without a word.
    """
    unknown = [n for n in settings.sources.names() if n not in REGISTRY]
    if unknown:
        raise ValueError(
            f"settings name candidate sources that are not registered: {unknown} "
            f"(registered: {list(REGISTRY)}); check the RECSYS_SOURCES__* variables, or import "
            "the module that registers the source before building the pipeline"
        )
    out = []
    for name, cls in REGISTRY.items():
        if task not in cls.tasks:
            continue
        raw = settings.sources.raw(name)
        if raw is None:  # a plug-in source is off until configured
            continue
        cfg = cls.settings_model.model_validate(raw)
        if cfg.enabled:
            out.append((cls, cfg))
    return out


# the built-in sources, in the order they run (and their features come in the ranker's rows)
from models.sources import item_item, two_tower, als, bought_together, popular  # noqa: E402, I001
from models.sources import session  # noqa: E402

__all__ = [
    "MISSING_RANK",
    "REGISTRY",
    "CandidateSource",
    "Proposal",
    "Request",
    "SourceData",
    "Task",
    "als",
    "bought_together",
    "enabled_sources",
    "item_item",
    "popular",
    "register",
    "session",
    "two_tower",
]
