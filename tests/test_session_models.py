"""Session models and the next-item protocol against answers computed another way: by hand
for the rule models, a pure-Python session-rec V-SkNN, a direct least-squares solve of SLIST's
objective, and hand-counted HR/MRR for the protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.session.base import MODELS, SessionModel
from models.session.data import Sessions
from models.session.knn import VSkNN
from models.session.protocol import (
    evaluate,
    grid_points,
    next_item_cases,
    resolve_params,
    tune,
    validation_split,
)
from models.session.rules import Cooccurrence, SequentialRules
from models.session.slist import SLIST
from recsys.core.run import Run

DAY = np.timedelta64(1, "D")
T0 = np.datetime64("2024-03-01T00:00", "ns")


def sessions_of(lists: list[list[int]], days: list[float] | None = None) -> Sessions:
    """Sessions from lists of item indices; session ``s`` starts ``days[s]`` days after T0."""
    days = list(range(len(lists))) if days is None else days
    lengths = [len(x) for x in lists]
    items = np.array([i for x in lists for i in x], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    start = np.array([T0 + np.timedelta64(int(d * 86_400e9), "ns") for d in days])
    return Sessions(items, offsets, start.astype("datetime64[ns]"))


def random_sessions(rng: np.random.Generator, n: int, n_items: int, max_len: int) -> list[list]:
    return [list(rng.integers(1, n_items, rng.integers(1, max_len + 1))) for _ in range(n)]


def prefix(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


# --------------------------------------------------------------------------- registry, params
@pytest.mark.unit
def test_registry_has_the_four_models() -> None:
    assert {"sr", "cooccurrence", "vsknn", "slist"} <= set(MODELS)
    for name in ("sr", "cooccurrence", "vsknn", "slist"):
        cls = MODELS[name]
        assert cls.name == name
        for key, values in cls.grid.items():
            assert key in cls.defaults and len(values) >= 2


@pytest.mark.unit
def test_unknown_parameter_and_bad_values_are_named() -> None:
    s = sessions_of([[1, 2]])
    with pytest.raises(ValueError, match="stepz"):
        SequentialRules.fit(s, 3, stepz=2)
    with pytest.raises(ValueError, match="weighting"):
        SequentialRules.fit(s, 3, weighting="cubic")
    with pytest.raises(ValueError, match="n_items"):
        SequentialRules.fit(s, 2)
    with pytest.raises(ValueError, match="vocabulary"):
        SequentialRules.fit(s, 3).score([prefix(7)])


# --------------------------------------------------------------------------- sequential rules
@pytest.mark.unit
def test_sequential_rules_weights_by_distance() -> None:
    s = sessions_of([[1, 2, 3], [1, 3]])
    div = SequentialRules.fit(s, 5, steps=2, weighting="div", pruning=0)
    # 1->2: 1 (d=1); 1->3: 1/2 (d=2) + 1 (second session); 2->3: 1
    np.testing.assert_allclose(div.score([prefix(1)])[0], [0, 0, 1, 1.5, 0])
    np.testing.assert_allclose(div.score([prefix(2)])[0], [0, 0, 0, 1, 0])
    quad = SequentialRules.fit(s, 5, steps=2, weighting="quadratic", pruning=0)
    np.testing.assert_allclose(quad.score([prefix(1)])[0], [0, 0, 1, 1.25, 0])
    lin = SequentialRules.fit(s, 5, steps=2, weighting="linear", pruning=0)
    np.testing.assert_allclose(lin.score([prefix(1)])[0], [0, 0, 0.9, 1.7, 0], rtol=1e-6)
    log = SequentialRules.fit(s, 5, steps=2, weighting="log", pruning=0)
    expected = [0, 0, 1 / math.log10(2.7), 1 / math.log10(3.7) + 1 / math.log10(2.7), 0]
    np.testing.assert_allclose(log.score([prefix(1)])[0], expected, rtol=1e-6)
    one_step = SequentialRules.fit(s, 5, steps=1, pruning=0)
    np.testing.assert_allclose(one_step.score([prefix(1)])[0], [0, 0, 1, 1, 0])


@pytest.mark.unit
def test_sequential_rules_score_the_last_known_item_and_keep_repeats() -> None:
    model = SequentialRules.fit(sessions_of([[1, 2, 1], [3, 4]]), 5, steps=2, pruning=0)
    scores = model.score([prefix(3, 1), prefix(1, 0), prefix(), prefix(0)])
    np.testing.assert_allclose(scores[0], [0, 0.5, 1, 0, 0])  # 1->1 (d=2) is a rule too
    np.testing.assert_allclose(scores[1], scores[0])  # the unknown 0 is skipped
    assert not scores[2].any() and not scores[3].any()
    assert scores.dtype == np.float32 and scores.shape == (4, 5)


@pytest.mark.unit
def test_sequential_rules_pruning_keeps_the_strongest_and_linear_stops_at_ten() -> None:
    s = sessions_of([[1, 2], [1, 3], [1, 3], [1, 4]])
    pruned = SequentialRules.fit(s, 5, steps=1, pruning=2)
    np.testing.assert_allclose(pruned.score([prefix(1)])[0], [0, 0, 1, 2, 0])  # 2 beats 4 (index)
    assert pruned.rules.nnz == 2
    long = SequentialRules.fit(sessions_of([list(range(1, 13))]), 13, steps=15,
                               weighting="linear", pruning=0)  # fmt: skip
    row = long.score([prefix(1)])[0]
    np.testing.assert_allclose(row[2:11], 1 - 0.1 * np.arange(1, 10), rtol=1e-6)
    assert row[11] == 0 and row[12] == 0  # d >= 10: no (negative) rule


# --------------------------------------------------------------------------- co-occurrence
@pytest.mark.unit
def test_cooccurrence_counts_both_directions_within_the_window() -> None:
    s = sessions_of([[1, 2, 3], [1, 2, 1]])
    near = Cooccurrence.fit(s, 4, window=1)
    np.testing.assert_allclose(near.score([prefix(1)])[0], [0, 0, 3, 0])
    np.testing.assert_allclose(near.score([prefix(2)])[0], [0, 3, 0, 1])
    np.testing.assert_allclose(near.score([prefix(3)])[0], [0, 0, 1, 0])
    wide = Cooccurrence.fit(s, 4, window=2)
    np.testing.assert_allclose(wide.score([prefix(1)])[0], [0, 2, 3, 1])  # 1..1 counts twice
    np.testing.assert_allclose(wide.rules.toarray(), wide.rules.toarray().T)


# --------------------------------------------------------------------------- V-SkNN
POSITION = {
    "div": lambda i, n: i / n,
    "linear": lambda i, n: max(0.0, 1 - 0.1 * (n - i)),
    "quadratic": lambda i, n: (i / n) ** 2,
    "log": lambda i, n: 1 / math.log10(n - i + 1.7),
    "same": lambda i, n: 1.0,
}
DECAY = {
    "div": lambda d: 1 / d,
    "linear": lambda d: max(0.0, 1 - 0.1 * d),
    "quadratic": lambda d: 1 / d**2,
    "log": lambda d: 1 / math.log10(d + 1.7),
    "same": lambda d: 1.0,
}


def brute_vsknn(train: list[list[int]], days: list[float], query: list[int], n_items: int,
                k: int, sample_size: int, weighting: str, score_weighting: str, idf: bool,
                normalize: bool) -> np.ndarray:  # fmt: skip
    """session-rec's V-SkNN, one prefix, loops and sets."""
    order = sorted(range(len(train)), key=lambda s: days[s])  # stable: ties keep input order
    sets = [{i for i in train[s] if i} for s in order]
    frequency = {i: sum(i in x for x in sets) for i in range(n_items)}
    query = [i for i in query if i]
    n = len(query)
    out = np.zeros(n_items)
    if not n:
        return out
    weight = {}
    for position, item in enumerate(query, start=1):  # a repeat keeps its last position
        weight[item] = POSITION[weighting](position, n)
        if idf:
            weight[item] *= math.log(len(sets) / frequency[item])
    shared = [s for s, x in enumerate(sets) if x & set(query)]
    candidates = sorted(shared, reverse=True)[:sample_size]  # the most recent
    neighbours = []
    for s in candidates:
        sim = sum(weight[i] for i in sets[s] & set(query))
        sim /= math.sqrt(len(weight) * len(sets[s])) if normalize else len(weight)
        if sim > 0:
            neighbours.append((s, sim))
    neighbours.sort(key=lambda x: (-round(x[1], 10), -x[0]))
    for s, sim in neighbours[:k]:
        step = next(d for d, item in enumerate(reversed(query), start=1) if item in sets[s])
        for item in sets[s]:
            out[item] += sim * DECAY[score_weighting](step)
    return out


@pytest.mark.unit
@pytest.mark.parametrize(
    "params",
    [
        {"k": 5, "sample_size": 20, "weighting": "div", "score_weighting": "div"},
        {"k": 3, "sample_size": 8, "weighting": "linear", "score_weighting": "quadratic",
         "idf": True},
        {"k": 10, "sample_size": 1000, "weighting": "quadratic", "score_weighting": "linear",
         "normalize": True},
        {"k": 4, "sample_size": 15, "weighting": "log", "score_weighting": "log", "idf": True,
         "normalize": True},
        {"k": 2, "sample_size": 5, "weighting": "same", "score_weighting": "same"},
    ],
)  # fmt: skip
def test_vsknn_matches_a_brute_force_session_rec(params: dict) -> None:
    rng = np.random.default_rng(len(str(params)))
    n_items = 12
    train = random_sessions(rng, 120, n_items, 7)
    train[5] = [3, 0, 4]  # an unknown item inside a training session is ignored
    days = list(rng.integers(0, 40, len(train)).astype(float))  # unordered, with ties
    queries = random_sessions(rng, 40, n_items, 14) + [[], [0], [2, 0, 2, 5, 2]]
    queries.append(list(range(1, 12)) + [1, 1])  # linear weights reach 0 for the oldest
    model = VSkNN.fit(sessions_of(train, days), n_items, **params)
    full = resolve_params(VSkNN, params)
    got = model.score([np.array(q, dtype=np.int64) for q in queries])
    for row, query in zip(got, queries, strict=True):
        expected = brute_vsknn(train, days, query, n_items, full["k"], full["sample_size"],
                               full["weighting"], full["score_weighting"], full["idf"],
                               full["normalize"])  # fmt: skip
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- SLIST
def slist_system(train: list[list[int]], days: list[float], n_items: int, alpha: float,
                 session_weight: float, train_weight: float) -> tuple:  # fmt: skip
    """(A, T, w) of SLIST's objective written out row by row (direction "part", L1 inputs)."""
    latest = max(days)
    rows_in, rows_out, weights = [], [], []
    for items, day in zip(train, days, strict=True):
        w = math.exp(-(latest - day) / session_weight)
        x = np.zeros(n_items)
        x[items] = 1.0
        rows_in.append(math.sqrt(alpha) * x / x.sum())
        rows_out.append(math.sqrt(alpha) * x)
        weights.append(w)
    for items, day in zip(train, days, strict=True):
        w = math.exp(-(latest - day) / session_weight)
        for t in range(len(items) - 1):
            z, y = np.zeros(n_items), np.zeros(n_items)
            for s in range(t + 1):
                z[items[s]] += math.exp(-(t - s) / train_weight)
            for s in range(t + 1, len(items)):
                y[items[s]] += math.exp(-(s - t - 1) / train_weight)
            rows_in.append(math.sqrt(1 - alpha) * z / z.sum())
            rows_out.append(math.sqrt(1 - alpha) * y)
            weights.append(w)
    return np.array(rows_in), np.array(rows_out), np.array(weights)


def ridge_solve(a: np.ndarray, t: np.ndarray, w: np.ndarray, reg: float,
                max_diagonal: float) -> np.ndarray:  # fmt: skip
    """min ||W^1/2 (T - A B)||^2 + reg ||B||^2 s.t. diag(B) <= max_diagonal, column by column,
    by least squares on the stacked system (no normal equations): an active bound fixes
    B_jj and the rest of the column is refitted."""
    n = a.shape[1]
    root = np.sqrt(w)[:, None]
    design = np.vstack([root * a, math.sqrt(reg) * np.eye(n)])
    out = np.zeros((n, n))
    for j in range(n):
        target = np.concatenate([root[:, 0] * t[:, j], np.zeros(n)])
        col = np.linalg.lstsq(design, target, rcond=None)[0]
        if col[j] > max_diagonal:
            rest = [i for i in range(n) if i != j]
            fixed = target - design[:, j] * max_diagonal
            col = np.zeros(n)
            col[rest] = np.linalg.lstsq(design[:, rest], fixed, rcond=None)[0]
            col[j] = max_diagonal
        out[:, j] = col
    return out


@pytest.mark.unit
@pytest.mark.parametrize("alpha,max_diagonal", [(0.5, 10.0), (0.3, 0.05), (1.0, 0.2)])
def test_slist_solves_its_objective(alpha: float, max_diagonal: float) -> None:
    train = [[1, 2, 3], [2, 3, 2, 4], [1, 4], [3, 5, 1, 2], [5, 5, 2], [4, 1, 3]]
    days = [0.0, 1.5, 3.0, 4.0, 6.0, 7.5]
    n_items = 6
    params = {"alpha": alpha, "reg": 0.7, "session_weight": 4.0, "train_weight": 2.0,
              "predict_weight": 3.0, "max_diagonal": max_diagonal}  # fmt: skip
    model = SLIST.fit(sessions_of(train, days), n_items, **params)
    a, t, w = slist_system(train, days, n_items, alpha, 4.0, 2.0)
    expected = ridge_solve(a, t, w, 0.7, max_diagonal)
    np.testing.assert_allclose(model.weights, expected, rtol=1e-4, atol=1e-5)
    assert np.diag(model.weights).max() <= max_diagonal + 1e-5
    query = [3, 1, 3, 0, 2]
    known = [i for i in query if i]
    by_hand = sum(math.exp(-(len(known) - 1 - s) / 3.0) * expected[i] for s, i in enumerate(known))
    np.testing.assert_allclose(model.score([np.array(query)])[0], by_hand, rtol=1e-4, atol=1e-5)
    assert not model.score([prefix()]).any()


@pytest.mark.unit
def test_slist_beyond_max_items_learns_the_most_frequent_items_only() -> None:
    # items 1-3 are frequent, 4-6 rare: with max_items=3 SLIST is the full model of the
    # sessions restricted to 1-3, placed back at their indices, and the rare items score 0
    lists = [[1, 2, 3], [2, 1], [3, 1, 2], [1, 4], [2, 5, 6], [3, 2], [1, 3]]
    small = SLIST.fit(sessions_of(lists), 7, max_items=3)
    assert small.items.tolist() == [1, 2, 3] and small.weights.shape == (4, 4)
    only_frequent = [[i for i in x if i <= 3] for x in lists]
    full = SLIST.fit(sessions_of(only_frequent), 4)
    query = [prefix(2, 5, 1), prefix(6)]
    scores = small.score(query)
    assert scores.shape == (2, 7) and not scores[:, 4:].any() and not scores[1].any()
    np.testing.assert_allclose(scores[0, :4], full.score([prefix(2, 1)])[0], rtol=1e-5)
    assert SLIST.fit(sessions_of(lists), 7, max_items=6).items.tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="max_items"):
        SLIST.fit(sessions_of([[1, 2]]), 3, max_items=0)
    with pytest.raises(ValueError, match="reg"):
        SLIST.fit(sessions_of([[1, 2]]), 3, reg=0)


# --------------------------------------------------------------------------- persistence
@pytest.mark.unit
@pytest.mark.parametrize("name", ["sr", "cooccurrence", "vsknn", "slist", "slist_top_items"])
def test_save_load_round_trip_scores_the_same(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train = random_sessions(rng, 60, 10, 6)
    params = {"max_items": 5} if name == "slist_top_items" else {}
    name = name.removesuffix("_top_items")
    model: SessionModel = MODELS[name].fit(sessions_of(train), 10, **params)
    run = Run(tmp_path)
    model.save(run, f"session_{name}")
    again = MODELS[name].load(run, f"session_{name}")
    queries = [np.array(q, dtype=np.int64) for q in random_sessions(rng, 20, 10, 5)]
    np.testing.assert_array_equal(again.score(queries), model.score(queries))
    assert again.params == model.params and again.n_items == model.n_items
    assert not list(tmp_path.glob("*.pkl"))


@pytest.mark.unit
@pytest.mark.parametrize("name", ["sr", "cooccurrence", "vsknn", "slist"])
def test_a_prefix_scores_the_same_alone_or_in_a_batch(name: str) -> None:
    """What lets the ranker's rows score all prefixes at once (``CandidateSource.prime``)."""
    rng = np.random.default_rng(5)
    model: SessionModel = MODELS[name].fit(sessions_of(random_sessions(rng, 300, 40, 8)), 40)
    queries = [np.array(q, dtype=np.int64) for q in random_sessions(rng, 200, 40, 7)]
    batch = model.score(queries)
    alone = np.stack([model.score([q])[0] for q in queries])
    np.testing.assert_array_equal(batch, alone)


# --------------------------------------------------------------------------- protocol
@pytest.mark.unit
def test_cases_drop_unknown_targets_and_keep_repeats() -> None:
    heldout = sessions_of([[1, 2, 0, 1], [3, 0], [9, 2, 4], [5]])
    cases = next_item_cases(heldout, known=np.array([1, 2, 3, 4]))
    assert [list(p) for p in cases.prefixes()] == [[1], [1, 2], [2]]
    assert list(cases.targets) == [2, 1, 4]  # the repeat of 1 is an event
    assert cases.events == len(cases) == 3
    assert len(next_item_cases(heldout)) == 4  # without `known` only 0s go: 9->2, 2->4 too


@pytest.mark.unit
def test_evaluate_counts_hits_and_reciprocal_ranks_per_event() -> None:
    cases = next_item_cases(sessions_of([[1, 2, 1], [2, 4]]))
    row = np.array([0.9, 0.5, 1.0, 0.1, 0.2, 0, 0, 0], dtype=np.float32)  # 0 never ranks

    def score(prefixes: list[np.ndarray]) -> np.ndarray:
        return np.tile(row, (len(prefixes), 1))

    # ranking 2, 1, 4, 3, ...: targets 2 (rank 1), 1 (rank 2), 4 (rank 3)
    at2 = evaluate(score, cases, k=2, batch=2)
    assert at2 == pytest.approx({"hr@2": 2 / 3, "mrr@2": 0.5, "events": 3})
    at20 = evaluate(score, cases)
    assert at20 == pytest.approx({"hr@20": 1.0, "mrr@20": (1 + 1 / 2 + 1 / 3) / 3, "events": 3})


@pytest.mark.unit
def test_validation_split_holds_out_the_latest_sessions() -> None:
    days = [5, 1, 9, 3, 7, 0, 8, 2, 6, 4]
    s = sessions_of([[d + 1] for d in days], [float(d) for d in days])
    fit, val = validation_split(s, share=0.2)
    assert sorted(val.items.tolist()) == [9, 10] and len(fit) == 8
    assert fit.start.max() < val.start.min()
    with pytest.raises(ValueError, match="share"):
        validation_split(s, share=1.0)


@pytest.mark.unit
def test_tune_returns_a_grid_point_and_its_table() -> None:
    rng = np.random.default_rng(0)
    train = [[int(a), int(a) % 7 + 1, (int(a) + 3) % 7 + 1] for a in rng.integers(1, 8, 300)]
    s = sessions_of(train, list(range(len(train))))
    best, table = tune(Cooccurrence, s, 8)
    assert len(table) == 4 and [r["params"]["window"] for r in table] == [1, 2, 3, 5]
    assert best == max(table, key=lambda r: r["mrr"])["params"]
    assert all(0 <= r["hr"] <= 1 and 0 <= r["mrr"] <= r["hr"] for r in table)
    best, table = tune(SequentialRules, s, 8, max_trials=5, seed=1)
    assert len(table) == 5 and best in [r["params"] for r in table]
    assert best["steps"] in SequentialRules.grid["steps"]
    assert [r["params"] for r in table] == grid_points(SequentialRules, 5, seed=1)
