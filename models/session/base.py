"""The contract of a session model, and the registry the sources and the evaluation use.

Items are vocabulary indices (``1..n_items-1``; 0 is padding / an unknown item, never scored).
A *prefix* is the part of one session seen so far, oldest first, as an int64 array. Models are
fitted on :class:`~models.session.data.Sessions` coded in the same vocabulary as the prefixes
they score: the run's item vocabulary when served, so a source can hand its scores straight to
the candidate generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from scipy import sparse

from models.session.data import Sessions
from recsys.core.run import Run
from recsys.core.settings import Settings

M = TypeVar("M", bound=type["SessionModel"])
MODELS: dict[str, type[SessionModel]] = {}


def register_model(cls: M) -> M:
    """Make ``cls`` available under ``cls.name`` (a class decorator)."""
    other = MODELS.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"two session models are named {cls.name!r}: {other} and {cls}")
    MODELS[cls.name] = cls
    return cls


class SessionModel(ABC):
    """A next-item model. ``params``: the hyper-parameters it was fitted with (JSON values).

    ``defaults``: the hyper-parameters used when none are given. ``grid``: the values
    ``recsys evaluate --task next-item`` tries on a validation slice of the training sessions
    (every combination, or a seeded sample when there are many): the peers are tuned with the
    same budget as the served pipeline's sources.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    grid: ClassVar[dict[str, Sequence[Any]]] = {}

    def __init__(self, n_items: int, params: dict[str, Any]) -> None:
        self.n_items = n_items
        self.params = params

    @classmethod
    @abstractmethod
    def fit(cls, sessions: Sessions, n_items: int, **params: Any) -> Self:
        """Fit on ``sessions`` (items coded ``1..n_items-1``; 0s, if any, are ignored)."""

    @classmethod
    def fit_ray(cls, settings: Settings, sessions: Sessions, n_items: int, **params: Any) -> Self:
        """Fit through Ray Train (``settings.train.num_workers`` workers) when the model has an
        epoch loop to distribute; closed forms and counts fit in-process (this default)."""
        return cls.fit(sessions, n_items, **params)

    @abstractmethod
    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        """(len(prefixes), n_items) float32 scores, higher is more likely next; column 0 and
        items the model knows nothing about for a prefix score 0. An empty prefix scores 0
        everywhere. Items of the prefix itself are *not* removed (repeats are legitimate next
        clicks; hiding them is a business rule applied by the caller)."""

    def save(self, run: Run, part: str) -> None:
        """Write what was fitted as parts named ``part`` or ``part_*`` of ``run``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def load(cls, run: Run, part: str) -> Self:
        """Read what :meth:`save` wrote."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")

    def save_params(self, run: Run, part: str) -> None:
        """The part every model writes beside its arrays: catalogue size and parameters."""
        run.write_json(f"{part}_params", {"n_items": self.n_items, "params": self.params})

    @staticmethod
    def read_params(run: Run, part: str) -> tuple[int, dict[str, Any]]:
        """(n_items, params) as :meth:`save_params` wrote them."""
        meta = run.read_json(f"{part}_params")
        return int(meta["n_items"]), dict(meta["params"])

    def describe(self) -> str:
        """What was fitted, in a few words for logs."""
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


def resolve_params(model_cls: type[SessionModel], params: Mapping[str, Any]) -> dict[str, Any]:
    """``model_cls.defaults`` overridden by ``params``; a name the model does not take is an
    error rather than silently ignored (a typo in a config would otherwise tune nothing)."""
    unknown = sorted(set(params) - set(model_cls.defaults))
    if unknown:
        raise ValueError(
            f"{model_cls.__name__} has no parameter(s) {', '.join(unknown)}; it takes "
            f"{', '.join(model_cls.defaults) or 'none'}."
        )
    return {**model_cls.defaults, **params}


P = TypeVar("P", bound=BaseModel)


def parse_params(model: type[P], params: Mapping[str, Any], name: str) -> P:
    """``params`` validated by a model's pydantic parameter class; a ValueError naming each
    bad one and what the model accepts (``name``: the model, for the message)."""
    try:
        return model(**params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'params'}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        )
        known = ", ".join(model.model_fields)
        raise ValueError(f"{name}: bad parameter(s): {problems}. Parameters: {known}.") from None


def csr_parts(matrix: sparse.csr_array, with_data: bool = True) -> dict[str, np.ndarray]:
    """A CSR matrix as the tensors of a run part (int64 structure, float32 values;
    ``with_data`` False for a 0/1 matrix, whose values need not be stored)."""
    parts = {"indptr": matrix.indptr.astype(np.int64), "indices": matrix.indices.astype(np.int64)}
    if with_data:
        parts["data"] = matrix.data.astype(np.float32)
    return parts


def csr_from_parts(parts: Mapping[str, np.ndarray], n_cols: int) -> sparse.csr_array:
    """The matrix :func:`csr_parts` stored (ones where it stored no values)."""
    indptr, indices = parts["indptr"], parts["indices"]
    data = parts["data"] if "data" in parts else np.ones(len(indices))
    return sparse.csr_array((data, indices, indptr), shape=(len(indptr) - 1, n_cols))
