"""ALS source: the items a matrix factorisation of all purchases scores highest for the history.

EASE (the item-item source) weighs items by their co-purchases with each history item; ALS
(implicit's, Hu, Koren and Volinsky 2008) compresses all purchases into a few dozen factors, so
it reaches items that share no basket with the history and ranks by a different error. Its
score is evidence for every candidate, whichever source proposed it.

The visitor's factors are folded in from their history at request time (implicit's own user
step: one small linear solve against the fitted item factors), not looked up: the API then
serves a shopper who bought since the fit, a label user's factors in the ranker's rows come
from their history without the label exactly as a served visitor's come from theirs, and
nothing per user is stored in the run.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from models.baselines import ALS, binarize
from models.context import ItemCatalog, UserContext
from models.sources import register
from models.sources.base import CandidateSource, Proposal, Request, SourceData
from recsys.core.arrays import InnerProductTopK
from recsys.core.run import Run
from recsys.core.settings import AlsSourceSettings

ALS_PART = "als"  # its part of a run folder (als.safetensors)


class FoldIn:
    """User factors from a set of items, against fitted item factors (row = item index).

    Solves implicit's user step for a binary history with confidence ``alpha``:
    ``(Y^T Y + reg I + (alpha - 1) Y_h^T Y_h) x = alpha Y_h^T 1``; ``Y^T Y`` is computed once.
    """

    def __init__(self, item_factors: np.ndarray, regularization: float, alpha: float) -> None:
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.regularization, self.alpha = float(regularization), float(alpha)
        factors = self.item_factors.astype(np.float64)
        self._base = factors.T @ factors + self.regularization * np.eye(factors.shape[1])

    def __call__(self, items: np.ndarray) -> np.ndarray | None:
        """The user factors of a history (item indices), None when it is empty."""
        items = np.unique(items[(items > 0) & (items < len(self.item_factors))])
        if len(items) == 0:
            return None
        history = self.item_factors[items].astype(np.float64)
        system = self._base + (self.alpha - 1.0) * (history.T @ history)
        return np.linalg.solve(system, self.alpha * history.sum(axis=0)).astype(np.float32)


@register
class AlsSource(CandidateSource):
    name = "als"
    features = ("als_score", "als_rank")
    score_feature = "als_score"
    rank_feature = "als_rank"
    order = ("als_score", True)
    marker = "als_rank"
    settings_model = AlsSourceSettings

    def __init__(self, cfg: AlsSourceSettings, fold_in: FoldIn) -> None:
        super().__init__(cfg)
        self.fold_in = fold_in
        self.top = InnerProductTopK(fold_in.item_factors)

    @classmethod
    def fit(cls, data: SourceData, cfg: AlsSourceSettings) -> Self:
        """implicit's ALS on the binary user x item matrix of ``data.purchases`` (columns in
        vocabulary order); only the item factors are kept."""
        model = ALS(cfg.factors, cfg.regularization, cfg.alpha, cfg.iterations).fit(
            binarize(data.purchase_matrix())
        )
        return cls(cfg, FoldIn(model.item_factors, cfg.regularization, cfg.alpha))

    def save(self, run: Run) -> None:
        f = self.fold_in
        run.write_tensors(ALS_PART, {
            "item_factors": f.item_factors,
            "regularization": np.array([f.regularization]), "alpha": np.array([f.alpha]),
        })  # fmt: skip

    @classmethod
    def load(cls, run: Run, cfg: AlsSourceSettings, data: SourceData) -> Self:
        """The fitted factors with the regularisation and confidence they were fitted with
        (the fold-in must solve the fit's own equations, whatever the settings say now)."""
        saved = run.read_tensors(ALS_PART)
        return cls(cfg, FoldIn(saved["item_factors"], saved["regularization"].item(),
                               saved["alpha"].item()))  # fmt: skip

    def describe(self) -> str:
        return f"{self.fold_in.item_factors.shape[1]} factors"

    def summary(self) -> dict[str, Any]:
        f = self.fold_in
        return {"factors": f.item_factors.shape[1], "regularization": f.regularization,
                "alpha": f.alpha}  # fmt: skip

    def propose(self, req: Request, k: int) -> Proposal | None:
        """The ``k`` best unblocked items for the history's folded-in factors. Only the items
        whose factor norm lets them reach the top are scored (:class:`InnerProductTopK`,
        exact); the ranker's rows take this same path, one label user at a time."""
        user = self.fold_in(req.seeds)
        if user is None:
            return None
        top, scores, _ = self.top(user, k, req.blocked)
        return Proposal(top, scores.astype(np.float64), state=user)

    def evidence(
        self, req: Request, items: np.ndarray, own: Proposal | None
    ) -> dict[str, np.ndarray]:
        out = super().evidence(req, items, own)
        if own is not None:  # the score of every candidate, not only its own
            user = own.state
            out["als_score"] = (self.fold_in.item_factors[items] @ user).astype(np.float64)
        return out

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        return "shoppers with purchases like yours bought it"
