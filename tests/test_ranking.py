"""The served pipeline's parts on hand-built data: neighbours, labels, candidates, ranker, rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.association_rules import mine_rules
from models.candidates import CandidateGenerator
from models.context import ItemCatalog, ItemFilters, UserContext
from models.item_item import ItemNeighbors
from models.popularity import segment_popularity
from models.ranker import Ranker
from models.served_pipeline import ServedPipeline
from models.sources import MISSING_RANK
from models.sources.bought_together import BoughtTogetherSource
from models.sources.item_item import ItemItemSource
from models.sources.popular import PopularSource
from models.sources.two_tower import ExactSearch, TwoTowerSource
from pipelines.ranking import carve_labels, compare_on_validation, histories
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.vocab import Vocabulary

END = pd.Timestamp("2026-11-01", tz="UTC")


def test_neighbour_gather_equals_the_dense_row_sum_and_survives_a_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((8, 8)).astype(np.float32) * (rng.random((8, 8)) < 0.4)
    dense[0] = 0  # row 0 is the unknown item
    neighbours = ItemNeighbors(sp.csr_matrix(dense), "test", {"top_n": 8})
    history = np.array([3, 1, 5])
    items, scores = neighbours.scores(history)
    expected = dense[history].sum(axis=0)
    assert set(items.tolist()) == set(np.flatnonzero(expected).tolist())
    np.testing.assert_allclose(scores, expected[items], rtol=1e-6)
    cols, weights, rows = neighbours.gather(np.array([0, 3, 99]))  # unknown ids are ignored
    assert set(rows.tolist()) <= {3} and len(cols) == np.count_nonzero(dense[3])

    neighbours.save(Run(tmp_path))
    loaded = ItemNeighbors.load(Run(tmp_path))
    assert loaded.method == "test" and loaded.params == {"top_n": 8}
    np.testing.assert_array_equal(loaded.matrix.toarray(), dense)
    ids, w = loaded.neighbours(3, 2)
    assert list(ids) == list(np.argsort(-dense[3], kind="stable")[:2])


def test_ease_neighbours_keep_only_the_top_n_positive_weights() -> None:
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((200, 12)) < 0.3).astype(np.float32))
    n = ItemNeighbors.fit(x, "ease", top_n=3, ease_lambda=10.0)
    row_sizes = np.diff(n.matrix.indptr)
    assert n.method == "ease" and row_sizes.max() <= 3
    assert (n.matrix.data > 0).all() and n.matrix.diagonal().sum() == 0
    cosine = ItemNeighbors.fit(x, "cosine", top_n=3)
    assert cosine.method == "cosine" and np.diff(cosine.matrix.indptr).max() <= 3
    # past the dense matrix's memory budget, auto solves EASE per item over its partners
    local = ItemNeighbors.fit(x, "auto", top_n=3, ease_lambda=10.0, ease_memory_gb=1e-9)
    assert local.method == "ease_local" and local.params["support"] == 300
    assert np.diff(local.matrix.indptr).max() <= 3 and (local.matrix.data > 0).all()
    # 12 items all bought together: the partners are every item, so the weights are EASE's
    np.testing.assert_allclose(local.matrix.toarray(), n.matrix.toarray(), atol=1e-5)


def test_held_out_ease_rows_equal_a_fit_without_that_users_own_labels() -> None:
    """The rows the ranker's training gathers for a label user are EASE refitted without
    their held-out items (one or two), weights and kept neighbours alike, from the one fit."""
    rng = np.random.default_rng(2)
    bought = rng.random((300, 40)) < 0.12
    bought[:, 0] = False  # column 0: the unknown item
    x = sp.csr_matrix(bought.astype(np.float32))
    full = ItemNeighbors.fit(x, "ease", top_n=8, ease_lambda=5.0, keep_dense=True)
    assert full.dense is not None
    checked = 0
    for user in range(60):
        items = x[user].indices
        if len(items) < 3:
            continue
        held = items[: 1 + user % 2]
        kept = np.setdiff1d(items, held)
        without = bought.copy()
        without[user, held] = False
        ref = ItemNeighbors.fit(
            sp.csr_matrix(without.astype(np.float32)), "ease", top_n=8, ease_lambda=5.0
        )
        seeds = np.r_[kept[::-1], kept[0], 0, 99]  # a repeat, unknown ones: ignored
        cols, weights, rows = full.dense.gather(kept, held, seeds)
        expected = ref.gather(seeds)  # the same entries, in the same order
        np.testing.assert_array_equal(rows, expected[2])
        np.testing.assert_array_equal(cols, expected[0])  # the same top 8 kept
        np.testing.assert_allclose(weights, expected[1], rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked > 20
    # a user without held-out items gets the fit on everything, cut the same way
    seeds = x[0].indices
    plain = full.dense.gather(seeds, np.empty(0, dtype=np.int64), seeds)
    for got, expected in zip(plain, full.gather(seeds), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_the_ranker_rows_item_item_source_never_sees_the_visitors_label() -> None:
    """``held_out`` hands EASE's one fit to the rows' source; a label user's item-item
    candidates and evidence are those of EASE fitted without their own label."""
    rng = np.random.default_rng(3)
    items = [f"i{n:02d}" for n in range(30)]
    rows = [(f"u{u:03d}", items[(u % 5) + 5 * int(j)], END - pd.Timedelta(days=int(d)))
            for u in range(250) for d, j in enumerate(rng.choice(6, 3, replace=False))]  # fmt: skip
    purchases = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    catalog = pd.DataFrame({"item_id": items, "category": ["c"] * 30, "price": 10.0})
    settings = Settings(sources={name: {"enabled": False} for name in
                                 ("two_tower", "bought_together", "popular")})  # fmt: skip
    vocab = Vocabulary(items)
    fit_purchases, labels = carve_labels(purchases, 10_000, seed=0)

    def fit(on: pd.DataFrame, derive: bool = False) -> CandidateGenerator:
        return CandidateGenerator.fit(settings, vocab, on, catalog, None, END, None,
                                      derive_held_out=derive)  # fmt: skip

    everything = fit(purchases, derive=True)
    rows_generator = everything.held_out(
        settings, vocab, fit_purchases, labels, catalog, None, END, None
    )
    assert everything.source("item_item").neighbours.dense is None  # handed over, not copied
    assert "label" in rows_generator.describe()
    histories_ = histories(fit_purchases)
    stronger = 0
    for user, label in labels.head(6).itertuples(index=False):
        own = purchases[(purchases["user_id"] != user) | (purchases["item_id"] != label)]
        reference = fit(own)
        ctx = UserContext(user, histories_[user])
        got, expected = rows_generator.generate(ctx), reference.generate(ctx)
        np.testing.assert_array_equal(got.items, expected.items)
        for name in ("ii_score", "ii_rank", "ii_hits", "ii_max"):
            np.testing.assert_allclose(got.column(name), expected.column(name), rtol=1e-4)
        served = everything.generate(ctx)  # with the label in, its evidence is stronger
        label_index = vocab.indices([label])[0]
        if label_index in served.items and label_index in got.items:
            assert (served.column("ii_score")[served.items == label_index]
                    > got.column("ii_score")[got.items == label_index]).all()  # fmt: skip
            stronger += 1
    assert stronger >= 3


def _purchases(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def test_labels_are_each_users_latest_purchase_and_leave_history() -> None:
    purchases = _purchases([
        ("u1", "a", "2026-10-01"), ("u1", "b", "2026-10-03"), ("u1", "c", "2026-10-02"),
        ("u2", "a", "2026-10-01"),  # one item: not eligible
        ("u3", "c", "2026-10-05"), ("u3", "d", "2026-10-04"), ("u3", "c", "2026-10-06"),
    ])  # fmt: skip
    fit, labels = carve_labels(purchases, max_users=10, seed=0)
    assert labels.to_dict("records") == [
        {"user_id": "u1", "item_id": "b"}, {"user_id": "u3", "item_id": "c"}
    ]  # fmt: skip
    # every row of a label pair leaves the fit data (u3 bought c twice)
    assert set(map(tuple, fit[["user_id", "item_id"]].values)) == {
        ("u1", "a"), ("u1", "c"), ("u2", "a"), ("u3", "d")
    }  # fmt: skip
    assert histories(fit)["u1"] == ["c", "a"]  # newest first
    undated = purchases.assign(timestamp=END)
    _, labels_undated = carve_labels(undated, max_users=1, seed=0)
    assert len(labels_undated) == 1  # capped, and a random item of an eligible user


# --------------------------------------------------------------------------- candidates
ITEMS = [f"i{n}" for n in range(1, 13)]
CATEGORIES = ["dress"] * 6 + ["shoes"] * 6


def _catalog() -> ItemCatalog:
    frame = pd.DataFrame({
        "item_id": ITEMS,
        "category": CATEGORIES,
        "department": ["women"] * 12,
        "price": [10.0, 20, 30, 40, 50, 60, 15, 25, 35, 45, 55, 65],
        "in_stock": [True] * 11 + [False],
        "title": [f"t{n}" for n in range(1, 12)] + ["t1"],  # i12 duplicates i1's title
        "count": np.arange(12, 0, -1), "recent_count": np.arange(12),
    })  # fmt: skip
    return ItemCatalog.from_frame(Vocabulary(ITEMS), frame)


def _generator(search=None, item_vectors=None) -> CandidateGenerator:
    """The four built-in sources over hand-made neighbours, rules and sales."""
    catalog = _catalog()
    n = catalog.n_items
    dense = np.zeros((n, n), dtype=np.float32)
    dense[1, [2, 3, 7, 8]] = [0.9, 0.5, 0.4, 0.2]  # i1 -> i2, i3, i7, i8
    dense[2, [3, 9]] = [0.6, 0.3]
    neighbours = ItemNeighbors(sp.csr_matrix(dense), "test", {})
    rules = mine_rules(_purchases([("u1", "i1", "2026-10-01"), ("u1", "i10", "2026-10-01"),
                                   ("u2", "i1", "2026-10-02"), ("u2", "i10", "2026-10-02")]),
                       min_pair_baskets=2)  # fmt: skip
    sales = _purchases([(f"u{j}", ITEMS[j % 12], "2026-10-30") for j in range(40)])
    items = pd.DataFrame({"item_id": ITEMS, "category": CATEGORIES})
    popular = segment_popularity(sales, items, None, end=END)
    cfg = Settings().sources
    return CandidateGenerator(catalog, [
        ItemItemSource(cfg.item_item, neighbours),
        TwoTowerSource(cfg.two_tower, item_vectors, search),
        BoughtTogetherSource(cfg.bought_together, rules),
        PopularSource(cfg.popular, popular),
    ])  # fmt: skip


def test_candidates_merge_every_source_and_never_propose_what_was_bought() -> None:
    gen = _generator()
    ctx = UserContext("u", history=["i2", "i1"], features={"age": 30})
    cand = gen.generate(ctx)
    items = {gen.catalog.item_id(int(i)) for i in cand.items}
    assert not items & {"i1", "i2"}
    assert {"i3", "i7", "i8", "i9", "i10"} <= items
    assert cand.features.shape == (len(cand), len(gen.features))
    assert gen.features[:9] == (  # the sources' columns, in registry order
        "ii_score", "ii_rank", "ii_hits", "ii_max", "tt_score", "tt_rank",
        "bt_confidence", "bt_lift", "pop_rank",
    )  # fmt: skip
    col = {name: j for j, name in enumerate(gen.features)}
    row = {gen.catalog.item_id(int(i)): r for r, i in enumerate(cand.items)}
    i3 = cand.features[row["i3"]]
    assert i3[col["ii_score"]] == pytest.approx(0.5 + 0.6) and i3[col["ii_hits"]] == 2
    assert i3[col["ii_rank"]] == 1  # 1.1 beats i7's 0.4
    # i3's strongest single weight comes from i2 (0.6 > 0.5): that is its reason's seed
    assert gen.catalog.item_id(int(cand.seeds["item_item"][row["i3"]])) == "i2"
    assert i3[col["ii_max"]] == pytest.approx(0.6)
    i10 = cand.features[row["i10"]]
    assert i10[col["bt_confidence"]] == 1.0 and i10[col["ii_rank"]] == MISSING_RANK
    # a candidate of another source still carries its item-item evidence: none here
    assert i10[col["ii_score"]] == 0 and i10[col["ii_hits"]] == 0 and i10[col["ii_max"]] == 0
    assert gen.catalog.item_id(int(cand.seeds["bought_together"][row["i10"]])) == "i1"
    assert cand.sources["bought_together"][row["i10"]] and cand.sources["popular"].any()
    # affinity: half of the two history items are dresses (both are): share 1.0 for dresses
    assert i3[col["aff_category"]] == 1.0 and i10[col["aff_category"]] == 0.0


def test_every_candidate_gets_its_two_tower_score_when_item_vectors_are_known() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(ITEMS) + 1, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gen = _generator(item_vectors=vectors)
    user = vectors[5].copy()  # nobody's neighbour: the search is off, the score still comes
    cand = gen.generate(UserContext("u", history=["i1"], vector=user))
    np.testing.assert_allclose(cand.column("tt_score"), vectors[cand.items] @ user, rtol=1e-6)
    assert not cand.sources["two_tower"].any()


def test_filters_apply_to_every_source() -> None:
    gen = _generator()
    ctx = UserContext("u", history=["i1"])
    cand = gen.generate(ctx, ItemFilters(category="shoes", max_price=40, in_stock=True))
    chosen = [gen.catalog.item_id(int(i)) for i in cand.items]
    assert chosen and set(chosen) <= {"i7", "i8", "i9"}
    assert len(gen.generate(ctx, ItemFilters(category="no-such-category"))) == 0


def test_a_failing_vector_search_degrades_instead_of_failing() -> None:
    def broken(*_args):
        raise RuntimeError("vector store down")

    gen = _generator(search=broken)
    cand = gen.generate(UserContext("u", history=["i1"], vector=np.ones(4, np.float32)))
    assert cand.failed == ["two_tower"] and len(cand) > 0


def test_exact_search_respects_exclusions_and_filters() -> None:
    catalog = _catalog()
    vectors = np.zeros((catalog.n_items, 2), dtype=np.float32)
    vectors[1:, 0] = np.arange(1, catalog.n_items)  # later items score higher
    search = ExactSearch(vectors, catalog)
    idx, scores = search(np.array([1.0, 0.0]), 3, ItemFilters(), np.array([12]))
    assert idx.tolist() == [11, 10, 9] and list(scores) == sorted(scores, reverse=True)
    idx, _ = search(np.array([1.0, 0.0]), 3, ItemFilters(category="dress"), np.array([], int))
    assert idx.tolist() == [6, 5, 4]


def test_exact_search_answers_the_same_primed_with_a_batch() -> None:
    """The ranker's rows score a batch of user vectors in one product (``prime``): each
    answer is the one-at-a-time answer, the primed scores are let go with an empty batch."""
    catalog = _catalog()
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((catalog.n_items, 8)).astype(np.float32)
    search = ExactSearch(vectors, catalog)
    users = list(rng.standard_normal((20, 8)).astype(np.float32))
    exclude, dresses = np.array([3, 7]), ItemFilters(category="dress")
    alone = [search(u, 5, f, exclude) for u in users for f in (ItemFilters(), dresses)]
    search.prime(users)
    search.item_vectors = -vectors  # from here only the primed scores give the old answers
    primed = [search(u, 5, f, exclude) for u in users for f in (ItemFilters(), dresses)]
    for (idx, scores), (idx_primed, scores_primed) in zip(alone, primed, strict=True):
        np.testing.assert_array_equal(idx_primed, idx)
        np.testing.assert_allclose(scores_primed, scores, rtol=1e-5)
    search.prime([])  # let go: the item vectors answer again
    expected = -vectors @ users[0]
    expected[[0, *exclude]] = -np.inf
    idx, _ = search(users[0], 5, ItemFilters(), exclude)
    np.testing.assert_array_equal(idx, np.argsort(-expected)[:5])


# --------------------------------------------------------------------------- ranker
def test_ranker_learns_a_planted_signal_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((300, 20, 3)).astype(np.float32)  # 300 groups of 20 rows
    y = np.zeros((300, 20), dtype=np.float32)
    y[np.arange(300), np.argmax(x[:, :, 1] + 0.05 * rng.random((300, 20)), axis=1)] = 1
    x, y, g = x.reshape(-1, 3), y.ravel(), np.full(300, 20)  # feature 1 decides
    ranker = Ranker.fit(x[:4000], y[:4000], g[:200], ["a", "b", "c"],
                        valid=(x[4000:], y[4000:], g[200:]), rounds=50)  # fmt: skip
    assert max(ranker.info["importance_gain"], key=ranker.info["importance_gain"].get) == "b"
    assert ranker.info["valid_ndcg@10"] > 0.8
    ranker.save(Run(tmp_path))
    loaded = Ranker.load(Run(tmp_path))
    assert loaded.feature_names == ["a", "b", "c"]
    np.testing.assert_allclose(loaded.predict(x[4000:]), ranker.predict(x[4000:]), rtol=1e-6)


@pytest.mark.parametrize("objective", ["binary", "lambdarank"])
def test_the_compiled_ranker_scores_as_lightgbm_does(tmp_path, objective) -> None:
    """Serving's trees compiled by lleaves give LightGBM's scores (missing values included),
    and a second load, as another API worker does, takes the cached library."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6000, 8))
    x[rng.random(x.shape) < 0.15] = np.nan  # candidates without a source's evidence
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * x[:, 2] > 0.8).astype(np.float32)
    names = [f"f{i}" for i in range(8)]
    run, cache = Run(tmp_path / "run"), tmp_path / "cache"
    run.path.mkdir()
    Ranker.fit(x, y, np.full(300, 20), names, rounds=100,
               params={"objective": objective}).save(run)  # fmt: skip
    plain = Ranker.load(run)
    compiled = Ranker.load(run, compile_to=cache)
    assert plain.compiled is None and compiled.compiled is not None
    request = x[:200]  # one request's candidates
    np.testing.assert_allclose(compiled.predict(request), plain.predict(request), atol=1e-6)
    np.testing.assert_allclose(compiled.predict(x.astype(np.float32)), plain.predict(x), atol=1e-6)
    assert len(list(cache.glob("*.so"))) == 1 and not list(cache.glob("*.partial"))
    again = Ranker.load(run, compile_to=cache)
    np.testing.assert_allclose(again.predict(request), plain.predict(request), atol=1e-6)


def test_validation_compares_the_ranker_with_each_source_alone() -> None:
    gen = _generator()
    col = {name: j for j, name in enumerate(gen.features)}
    x = np.full((3, len(gen.features)), np.nan, dtype=np.float32)
    x[:, col["ii_rank"]] = [1, 2, MISSING_RANK]  # item-item proposed rows 0 and 1
    x[:, col["ii_score"]] = [0.9, 0.5, 0.0]
    x[:, col["tt_rank"]] = [MISSING_RANK, MISSING_RANK, 1]  # the two-tower only row 2
    x[:, col["tt_score"]] = [0.1, 0.2, 0.3]
    x[:, col["pop_rank"]] = [2, 1, MISSING_RANK]
    y = np.array([0, 1, 0], dtype=np.float32)  # the label is row 1
    out = compare_on_validation(_ByFeature("tt_score", gen.features), gen, x, y, np.array([3]))
    ideal_second = 1 / np.log2(3)
    assert out["item_item"] == pytest.approx(ideal_second, abs=1e-5)  # ranks it second
    assert out["popular"] == pytest.approx(1.0)  # ranks it first
    assert out["two_tower"] == 0.0  # never proposed it
    assert out["bought_together"] == 0.0
    assert out["ranker"] == pytest.approx(ideal_second, abs=1e-5)  # 0.3 > 0.2 > 0.1


class _ByFeature:
    """A stand-in ranker scoring by one feature column (the real one is tested above)."""

    def __init__(self, column: str, features: tuple[str, ...]) -> None:
        self.column = features.index(column)
        self.feature_names = list(features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.nan_to_num(features[:, self.column].astype(np.float64), nan=0.0)


def test_business_rules_cap_a_category_and_drop_near_duplicates() -> None:
    gen = _generator()
    ranker = _ByFeature("item_log_count", gen.features)
    pipeline = ServedPipeline(gen, ranker, max_category_share=0.5)  # type: ignore[arg-type]
    ranking = pipeline.recommend(UserContext(None), k=4)
    ids = ranking.item_ids()
    cats = [gen.catalog.category_names[gen.catalog.category[gen.catalog.index(i)]] for i in ids]
    assert len(ids) == 4 and cats.count("dress") <= 2 and cats.count("shoes") <= 2
    assert not ({"i1", "i12"} <= set(ids))  # same title: one of them only
    assert all(r.reasons for r in ranking.items) and ranking.items[0].sources == ["popular"]
    # a short catalogue relaxes the rules rather than returning fewer than k
    assert len(pipeline.recommend(UserContext(None), k=12).items) == 12


def test_a_ranker_trained_on_other_features_is_refused(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 2)).astype(np.float32), (rng.random(200) < 0.2).astype(np.float32)
    Ranker.fit(x, y, np.full(10, 20), ["a", "b"], rounds=3).save(Run(tmp_path))
    with pytest.raises(ValueError, match="retrain"):
        ServedPipeline(_generator(), Ranker.load(Run(tmp_path)))


def test_sampled_negatives_keep_every_label_and_the_groups_in_order() -> None:
    from pipelines.ranking import sample_negatives

    rng = np.random.default_rng(0)
    groups = np.array([50, 120, 30, 200])
    y = np.zeros(groups.sum(), dtype=np.float32)
    y[np.cumsum(groups) - 1] = 1.0  # one label, last row of each group
    x = np.arange(len(y), dtype=np.float32)[:, None]  # the row number as the only feature
    xs, ys, gs = sample_negatives(x, y, groups, 0.5, rng)
    assert ys.sum() == 4 and gs.sum() == len(ys) == len(xs) and len(gs) == 4
    assert np.all(np.diff(xs[:, 0]) > 0)  # order kept
    assert 0.4 < (len(ys) - 4) / (len(y) - 4) < 0.6
    ends = np.cumsum(gs) - 1
    assert ys[ends].tolist() == [1.0] * 4  # each label still closes its own group
    same = sample_negatives(x, y, groups, 1.0, rng)
    assert len(same[1]) == len(y)
