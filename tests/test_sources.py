"""A new candidate source is one module: registered, configured, and it is proposed,
featurised, ranked and explained with no other edit (the plug-in contract of models/sources/).

The toy source below lives in this file only. It proposes the catalogue's newest items (the
highest item indices, a stand-in for "new in") and scores every candidate by its newness.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest

from models.candidates import CandidateGenerator
from models.context import ItemCatalog, UserContext
from models.ranker import Ranker
from models.served_pipeline import ServedPipeline
from models.sources import (
    REGISTRY,
    CandidateSource,
    Proposal,
    Request,
    SourceData,
    enabled_sources,
    register,
)
from pipelines.ranking import carve_labels, fit_ranking
from recsys.core.run import Run
from recsys.core.settings import Settings, SourceSettings
from recsys.core.vocab import Vocabulary

END = pd.Timestamp("2026-11-01", tz="UTC")
N_ITEMS, N_USERS, CLUSTERS = 60, 400, 6


class NewInSettings(SourceSettings):
    k: int = 5
    newest: int = 20  # items counted as "new in"


class NewInSource(CandidateSource):
    name = "new_in"
    features = ("new_in_score", "new_in_rank")
    score_feature = "new_in_score"
    rank_feature = "new_in_rank"
    order = ("new_in_score", True)
    marker = "new_in_rank"
    settings_model = NewInSettings

    def __init__(self, cfg: NewInSettings, first_new: int) -> None:
        super().__init__(cfg)
        self.first_new = first_new

    @classmethod
    def fit(cls, data: SourceData, cfg: NewInSettings) -> Self:
        return cls(cfg, data.catalog.n_items - cfg.newest)

    def save(self, run: Run) -> None:
        run.write_json("new_in", {"first_new": self.first_new})

    @classmethod
    def load(cls, run: Run, cfg: NewInSettings, data: SourceData) -> Self:
        return cls(cfg, run.read_json("new_in")["first_new"])

    def propose(self, req: Request, k: int) -> Proposal | None:
        newest = np.arange(req.catalog.n_items - 1, self.first_new - 1, -1)
        newest = newest[~req.blocked[newest]][:k]
        return Proposal(newest, newest.astype(np.float64))

    def evidence(
        self, req: Request, items: np.ndarray, own: Proposal | None
    ) -> dict[str, np.ndarray]:
        out = super().evidence(req, items, own)
        out["new_in_score"] = items.astype(np.float64)  # any candidate: how new it is
        return out

    def reason(self, ctx: UserContext, catalog: ItemCatalog, seed: int) -> str | None:
        return "new in"


@pytest.fixture
def new_in() -> Iterator[type[NewInSource]]:
    register(NewInSource)
    yield NewInSource
    REGISTRY.pop(NewInSource.name)


def _shop() -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """Users who buy within one of six item clusters (so item-item reaches their labels)."""
    rng = np.random.default_rng(0)
    items = [f"i{n:03d}" for n in range(N_ITEMS)]
    rows = []
    for u in range(N_USERS):
        cluster = u % CLUSTERS
        for j, item in enumerate(rng.choice(range(cluster, N_ITEMS, CLUSTERS), 4, replace=False)):
            rows.append((f"u{u:03d}", items[item], END - pd.Timedelta(days=10 - j)))
    purchases = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    catalog = pd.DataFrame({
        "item_id": items, "title": [f"Item {n}" for n in range(N_ITEMS)],
        "category": [f"c{n % 3}" for n in range(N_ITEMS)], "price": 10.0 + np.arange(N_ITEMS),
    })  # fmt: skip
    return items, purchases, catalog


def test_a_source_in_one_file_is_proposed_featurised_ranked_and_explained(
    new_in: type[NewInSource], tmp_path
) -> None:
    settings = Settings(home=tmp_path, sources={"new_in": {"k": 5}})
    item_ids, purchases, catalog = _shop()
    vocab = Vocabulary(item_ids)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(vocab.size, 8)).astype(np.float32)
    vectors[0] = 0
    fit_purchases, labels = carve_labels(purchases, 10_000, seed=0)
    users = pd.DataFrame({"user_id": sorted(purchases["user_id"].unique())})

    def user_vectors(frame: pd.DataFrame) -> np.ndarray:
        return rng.normal(size=(len(frame), 8)).astype(np.float32)

    run = Run(tmp_path / "run")
    run.path.mkdir()
    info: dict[str, Any] = fit_ranking(
        settings, fit_purchases, purchases, labels, vocab, catalog, users, user_vectors,
        vectors, END, run, progress=lambda _line: None,
    )  # fmt: skip

    # featurised and ranked: its columns are the ranker's, and training compared it alone
    own_columns = [i for i, name in enumerate(info["features"]) if name.startswith("new_in")]
    assert [info["features"][i] for i in own_columns] == ["new_in_score", "new_in_rank"]
    assert own_columns[0] == sum(len(s.features) for s in _builtin(settings))  # after theirs
    assert "new_in" in info["ranker"]["valid_ndcg@10_vs_sources"]
    assert run.read_json("new_in") == {"first_new": vocab.size - 20}  # saved into the run

    # loaded back from the run (its own load), proposed and explained
    generator = CandidateGenerator.load(run, settings, vocab, vector_search=None,
                                        item_vectors=vectors)  # fmt: skip
    assert [s.name for s in generator.sources] == [s.name for s in _builtin(settings)] + [
        "new_in"
    ]  # fmt: skip
    pipeline = ServedPipeline(generator, Ranker.load(run))
    history = ["i000", "i006"]
    ctx = UserContext("u000", history=history)
    cand = generator.generate(ctx)
    own = cand.items[cand.sources["new_in"]]
    assert len(own) == 5 and set(own.tolist()) <= set(range(vocab.size - 20, vocab.size))
    np.testing.assert_array_equal(cand.column("new_in_score"), cand.items)
    ranking = pipeline.recommend(ctx, k=N_ITEMS, keep_candidates=True)
    new_in_items = [r for r in ranking.items if "new_in" in r.sources]
    assert len(new_in_items) == 5 and all("new in" in r.reasons for r in new_in_items)
    assert not set(history) & set(ranking.item_ids())

    # fitted for the ranker's rows, the two-tower source searches the run's vectors exactly
    fitted = CandidateGenerator.fit(settings, vocab, purchases, catalog, None, END, vectors)
    near = fitted.generate(UserContext("u000", history=history, vector=vectors[10]))
    assert near.sources["two_tower"].any() and 10 in near.items[near.sources["two_tower"]]

    # switched off by its settings: the features are gone and the old ranker is refused
    off = Settings(home=tmp_path, sources={"new_in": {"enabled": False}})
    without = CandidateGenerator.load(run, off, vocab, None, vectors)
    assert "new_in_score" not in without.features
    with pytest.raises(ValueError, match="retrain"):
        ServedPipeline(without, Ranker.load(run))


def _builtin(settings: Settings) -> list[type[CandidateSource]]:
    """The built-in sources the user task runs by default, in their order."""
    return [cls for cls, _ in enabled_sources(settings) if cls.name != NewInSource.name]


def test_a_configured_but_unknown_source_is_an_error(tmp_path) -> None:
    settings = Settings(home=tmp_path, sources={"no_such_source": {"k": 3}})
    with pytest.raises(ValueError, match="no_such_source"):
        CandidateGenerator.fit(settings, Vocabulary(["a"]), pd.DataFrame(), pd.DataFrame(),
                               None, END, None)  # fmt: skip
