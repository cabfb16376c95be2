"""Session sources: each session model of ``models/session/`` as a candidate source.

They run in the session pipeline (``POST /recommendations``, ``similar?method=sessions``): from
the items of this visit, oldest first, a model scores the whole catalogue for the next click,
and its score of *every* candidate is a ranker feature (0 where the model has no evidence), so
the ranker can weigh sequential rules against neighbour sessions against the linear model.
One class per model, all alike: adding a model is a module in ``models/session/`` and three
lines here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from models.context import ItemCatalog, UserContext
from models.session import gru4rec, item2vec, knn, rules, slist
from models.session.base import MODELS, SessionModel, resolve_params
from models.sources import register
from models.sources.base import CandidateSource, PrimedScores, Proposal, Request, SourceData
from recsys.core.arrays import top_k
from recsys.core.run import Run
from recsys.core.settings import SessionSourceSettings


class SessionModelSource(CandidateSource):
    """A fitted session model proposing the next click of this visit.

    ``model``: the session model's registered name. ``verb``: how a reason tells why.
    """

    model: ClassVar[str]
    verb: ClassVar[str] = "often viewed after"
    settings_model = SessionSourceSettings
    tasks = ("session",)

    def __init__(self, cfg: SessionSourceSettings, fitted: SessionModel) -> None:
        super().__init__(cfg)
        self.fitted = fitted
        self._primed = PrimedScores()  # session -> scores, from prime()

    @classmethod
    def fit(cls, data: SourceData, cfg: SessionSourceSettings) -> Self:
        if data.sessions is None:
            raise ValueError(
                f"the {cls.name} source needs training sessions: fit it through the session "
                "pipeline (`recsys train` with RECSYS_SESSIONS__ENABLED=true)"
            )
        model_cls = MODELS[cls.model]
        try:
            params = resolve_params(model_cls, cfg.params)
        except ValueError as exc:
            raise ValueError(f"RECSYS_SOURCES__{cls.name.upper()}__PARAMS: {exc}") from exc
        fitted = model_cls.fit_ray(data.settings, data.sessions, data.catalog.n_items, **params)
        return cls(cfg, fitted)

    @property
    def part(self) -> str:
        return f"session_{self.name}"

    def save(self, run: Run) -> None:
        self.fitted.save(run, self.part)

    @classmethod
    def load(cls, run: Run, cfg: SessionSourceSettings, data: SourceData) -> Self:
        return cls(cfg, MODELS[cls.model].load(run, f"session_{cls.name}"))

    def describe(self) -> str:
        return self.fitted.describe()

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, **self.fitted.params}

    def prime(
        self,
        contexts: Sequence[UserContext],
        seeds: list[np.ndarray],
        sessions: list[np.ndarray],
    ) -> None:
        """Score every session of the coming requests in one call: the models score batches
        of prefixes (V-SkNN's neighbour search, the rules' row gathers) many times faster per
        prefix than one at a time, and a prefix's scores do not depend on its batch."""
        todo = [s for s in sessions if len(s)]
        self._primed.fill(todo, self.fitted.score(todo) if todo else [])

    def propose(self, req: Request, k: int) -> Proposal | None:
        """The ``k`` best-scored items (score > 0) not blocked; every item's score is kept as
        ``state`` for :meth:`evidence`."""
        if len(req.session) == 0:
            return None
        primed = self._primed.get(req.session)
        row = primed if primed is not None else self.fitted.score([req.session])[0]
        scores = row.astype(np.float64)
        open_scores = np.where(req.blocked[: len(scores)], -np.inf, scores)
        open_scores[open_scores <= 0] = -np.inf
        top = top_k(open_scores, k, finite_only=True)
        seeds = np.full(len(top), int(req.session[-1]), dtype=np.int64)
        return Proposal(top, scores[top], seeds, state=scores)

    def evidence(
        self, req: Request, items: np.ndarray, own: Proposal | None
    ) -> dict[str, np.ndarray]:
        out = super().evidence(req, items, own)
        if own is not None and self.score_feature is not None:
            out[self.score_feature] = own.state[items]  # 0: no evidence, not missing
        return out

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        return f"{self.verb} {catalog.display_name(seed)}" if seed else None


def _session_source(name: str, prefix: str, verb: str) -> type[SessionModelSource]:
    """A registered source for the session model called ``name`` (features
    ``<prefix>_score`` and ``<prefix>_rank``)."""
    attrs = {
        "name": name,
        "model": name,
        "verb": verb,
        "features": (f"{prefix}_score", f"{prefix}_rank"),
        "score_feature": f"{prefix}_score",
        "rank_feature": f"{prefix}_rank",
        "order": (f"{prefix}_score", True),
        "marker": f"{prefix}_rank",
    }
    return register(type(f"{name.title()}Source", (SessionModelSource,), attrs))


# in the order they run (and their features come in the session ranker's rows)
MODULES = (rules, knn, slist, gru4rec, item2vec)  # they register the models named below
SequentialRulesSource = _session_source("sr", "sr", "often viewed after")
VSkNNSource = _session_source("vsknn", "knn", "viewed in sessions like yours, after")
SlistSource = _session_source("slist", "slist", "goes with")
CooccurrenceSource = _session_source("cooccurrence", "cooc", "viewed together with")
Gru4recSource = _session_source("gru4rec", "gru", "likely next after")
Item2vecSource = _session_source("item2vec", "i2v", "viewed in the same sessions as")
