"""The contract of a candidate source: one module per source, found through a registry.

A source proposes items for one visitor and, for *any* candidate (whichever source proposed
it), gives the ranker its evidence: the item-item weight from the history, the two-tower
cosine, and so on. The generator (``models/candidates.py``), the ranker's feature list, ranker
training (``pipelines/ranking.py``), the reasons of the API's answers and its list of sources
are loops over the enabled sources, so adding a source is one module with one
:func:`~models.sources.register` call and, if it has knobs, an entry under ``sources:`` in the
settings (``RECSYS_SOURCES__<NAME>__K=...``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.baselines import InteractionMatrix
from models.context import ItemCatalog, ItemFilters, UserContext, VectorSearch
from models.session.data import Sessions
from recsys.core.run import Run
from recsys.core.settings import Settings, SourceSettings

#: The id of :meth:`SourceData.purchase_matrix`'s column 0 (no catalogue item has it).
UNKNOWN_COLUMN = "\x00pad"
#: The rank feature of an item its source did not propose (ranks start at 1).
MISSING_RANK = 1000.0
#: What a pipeline answers: ``user``, a known shopper's next purchases (their history, their
#: profile); ``session``, the next click of this visit (what was browsed, in order).
Task = Literal["user", "session"]


class PrimedScores:
    """Score rows computed ahead, in one batch, for the coming requests (a source's
    ``prime()``), keyed by the array each was computed from (a history, a session, a user
    vector): a request finds its row by the same array, or computes it alone when absent."""

    def __init__(self) -> None:
        self._rows: dict[bytes, np.ndarray] = {}

    def fill(self, keys: Sequence[np.ndarray], rows: Sequence[np.ndarray] | np.ndarray) -> None:
        """Keep ``rows[i]`` for ``keys[i]``, letting go of the previous batch's."""
        self._rows = {key.tobytes(): row for key, row in zip(keys, rows, strict=True)}

    def get(self, key: np.ndarray) -> np.ndarray | None:
        return self._rows.get(key.tobytes())

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class SourceData:
    """What sources are fitted on and what they may use when loaded.

    ``purchases``: (user_id, item_id, timestamp), the training purchases (minus the ranker's
    label slice while the ranker's rows are built). ``items``: the catalogue rows (item_id,
    title, category, ...) in vocabulary order. ``user_segments``: (user_id, age_bucket)
    or None. ``end``: where recency windows end. ``item_vectors``: the run's two-tower item
    vectors (row = item index). ``vector_search``: nearest item vectors to a user vector.
    ``derive_held_out``: :meth:`CandidateSource.held_out` will be asked of this fit, so a
    source that derives its held-out view from the fit keeps what it needs.
    """

    settings: Settings
    catalog: ItemCatalog
    purchases: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    user_segments: pd.DataFrame | None = None
    end: pd.Timestamp | None = None
    item_vectors: np.ndarray | None = None
    vector_search: VectorSearch | None = None
    sessions: Sessions | None = None
    derive_held_out: bool = False

    def purchase_matrix(self) -> sp.csr_matrix:
        """User x item purchase counts of ``purchases``, one column per vocabulary index
        (column 0, the unknown item, stays empty): what the matrix-fitted sources learn on."""
        if self.purchases is None:
            raise ValueError("this SourceData holds no purchases: sources are fitted on them")
        return InteractionMatrix.from_frame(
            self.purchases, item_ids=[UNKNOWN_COLUMN, *self.catalog.item_ids]
        ).matrix


@dataclass
class Request:
    """One visitor as every source sees them (built once per request by the generator)."""

    ctx: UserContext
    filters: ItemFilters
    catalog: ItemCatalog
    seeds: np.ndarray  # known item indices the behavioural sources start from, newest first
    excluded: np.ndarray  # item indices never proposed: the history (and this visit, hidden)
    blocked: np.ndarray  # bool over item indices: excluded, filtered out or unknown (row 0)
    session: np.ndarray  # known item indices of this visit, oldest first (session models)


@dataclass
class Proposal:
    """A source's own candidates, best first, with its score of each.

    ``seeds``: per item, the item index behind it (0: none), for the reason. ``extra``: more
    feature values of its own candidates (NaN for the others). ``state``: what ``propose``
    computed that ``evidence`` reuses.
    """

    items: np.ndarray
    scores: np.ndarray
    seeds: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    state: Any = None


class CandidateSource(ABC):
    """A candidate source. Class attributes describe it; instances hold what was fitted.

    ``features``: the ranker columns it fills, in order. ``score_feature`` / ``rank_feature``:
    the columns that get its own score / its rank (1 = its best; :data:`MISSING_RANK` for items
    it did not propose). ``order``: (column, higher is better), how it orders its own
    candidates (the source alone, in evaluation). ``marker``: the column whose value tells its
    own candidates from the others in a feature row (finite and below ``MISSING_RANK``).
    ``degrades``: a failure while proposing is logged and the request answered by the other
    sources (flagged ``degraded``) instead of failing. ``tasks``: the pipelines it runs in.
    """

    name: ClassVar[str]
    features: ClassVar[tuple[str, ...]]
    score_feature: ClassVar[str | None] = None
    rank_feature: ClassVar[str | None] = None
    order: ClassVar[tuple[str, bool]]
    marker: ClassVar[str]
    settings_model: ClassVar[type[SourceSettings]] = SourceSettings
    degrades: ClassVar[bool] = False
    tasks: ClassVar[tuple[Task, ...]] = ("user",)

    def __init__(self, cfg: SourceSettings) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ fit / save / load
    @classmethod
    @abstractmethod
    def fit(cls, data: SourceData, cfg: SourceSettings) -> Self:
        """Fit on ``data.purchases`` (and whatever else of ``data`` the source reads)."""

    def save(self, run: Run) -> None:  # noqa: B027 - a source may have nothing to save
        """Write what was fitted into ``run`` (nothing by default)."""

    @classmethod
    @abstractmethod
    def load(cls, run: Run, cfg: SourceSettings, data: SourceData) -> Self:
        """Read what :meth:`save` wrote; ``data`` holds the catalogue, item vectors and
        vector search of the loading process (no purchases)."""

    def held_out(self, data: SourceData, labels: pd.DataFrame) -> CandidateSource:
        """This source for the ranker's training rows, where no visitor's evidence may come
        from their own label: as if fitted on ``data.purchases``, the training purchases less
        ``labels`` (user_id, item_id: each label user's held-out items).

        The default fits the source again on them. A source whose fit is costly may instead
        derive, from this fit on everything, answers that leave each visitor's own labels out
        (the item-item source does, see :class:`~models.item_item.HeldOutEase`).
        """
        return type(self).fit(data, self.cfg)

    def describe(self) -> str:
        """What was fitted, in a few words for logs (e.g. "12,345 rules")."""
        return ""

    def summary(self) -> dict[str, Any]:
        """What was fitted, for the run manifest."""
        return {}

    # ------------------------------------------------------------------ request time
    def prime(  # noqa: B027 - most need nothing
        self,
        contexts: Sequence[UserContext],
        seeds: list[np.ndarray],
        sessions: list[np.ndarray],
    ) -> None:
        """Before a batch of requests (the ranker's training rows): work that is cheaper for
        all of them at once, keyed by what each request carries (``seeds`` and ``sessions``:
        each one's ``Request.seeds`` and ``Request.session``); nothing by default. What
        :meth:`propose` then returns must not change (beyond the float rounding of a batched
        matrix product)."""

    @abstractmethod
    def propose(self, req: Request, k: int) -> Proposal | None:
        """Up to ``k`` items not blocked in ``req``, best first; None: nothing to say."""

    def evidence(
        self, req: Request, items: np.ndarray, own: Proposal | None
    ) -> dict[str, np.ndarray]:
        """Feature columns over ``items`` (sorted item indices, every source's candidates).

        The default fills ``score_feature`` and ``extra`` for its own candidates (NaN for the
        rest) and ``rank_feature`` everywhere; a source that can score any item overrides this
        to fill its score for every candidate.
        """
        out: dict[str, np.ndarray] = {}
        pos = np.searchsorted(items, own.items) if own is not None else None
        if self.score_feature is not None:
            column = np.full(len(items), np.nan)
            if own is not None:
                column[pos] = own.scores
            out[self.score_feature] = column
        if self.rank_feature is not None:
            column = np.full(len(items), MISSING_RANK)
            if own is not None:
                column[pos] = np.arange(1, len(own.items) + 1)
            out[self.rank_feature] = column
        if own is not None:
            for name, values in own.extra.items():
                column = np.full(len(items), np.nan)
                column[pos] = values
                out[name] = column
        return out

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        """Why this source proposed an item; ``seed``: the item behind it (0: none)."""
        return None
