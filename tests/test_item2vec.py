"""item2vec: sessions, skip-gram pairs, the loss, planted structure through Ray Train, the
safetensors round trip, and item2vec as a session model. One Ray start for the module (Ray's
start-up dominates its cost)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.item2vec import (
    MANIFEST,
    Item2Vec,
    Item2VecConfig,
    load_item2vec,
    save_item2vec,
    skipgram_pairs,
    subsample_keep_prob,
    train_plain,
)
from models.metrics import next_item_metrics
from models.session.base import MODELS, resolve_params
from models.session.data import Sessions, SessionVocabulary, build_sessions
from models.session.item2vec import Item2VecSession
from pipelines.item2vec import cooccurrence_topk, next_item_steps
from pipelines.synth import generate
from recsys.core.run import Run
from recsys.core.settings import RaySettings, Settings, TrainSettings


def _events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "sid"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame.rename(columns={"sid": "session_id"})


def _decode(sessions: Sessions, vocab: SessionVocabulary) -> list[list[str]]:
    return [[vocab.id(i) for i in s] for s in np.split(sessions.items, sessions.offsets[1:-1])]


def _csr(*sessions: list[int]) -> Sessions:
    lengths = [len(s) for s in sessions]
    return Sessions(
        np.concatenate(sessions).astype(np.int64),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.zeros(len(sessions), dtype="datetime64[ns]"),
    )


# --------------------------------------------------------------------------- unit
def test_sessions_are_time_ordered_collapsed_and_fall_back_to_user_day() -> None:
    events = _events(
        [
            # s1 arrives out of order; A is viewed then carted (one step), then B, then A again.
            ("u1", "B", "2025-01-01 10:02", "view", "s1"),
            ("u1", "A", "2025-01-01 10:00", "view", "s1"),
            ("u1", "A", "2025-01-01 10:01", "add_to_cart", "s1"),
            ("u1", "A", "2025-01-01 10:03", "purchase", "s1"),
            ("u1", "C", "2025-01-01 09:00", "wishlist", "s1"),  # not a session event
            # u2 has no session ids: one session per calendar day (UTC).
            ("u2", "Y", "2025-01-01 23:00", "view", None),
            ("u2", "X", "2025-01-01 08:00", "view", ""),
            ("u2", "Z", "2025-01-02 00:30", "view", None),
            ("u3", "X", "2025-01-01 08:00", "view", None),  # same day, other user
            ("u3", "Z", "2025-01-01 08:05", "view", None),
        ]
    )
    sessions, vocab = build_sessions(events)
    # Sessions come in order of their first event; ties keep input order.
    decoded = _decode(sessions, vocab)
    assert sorted(map(tuple, decoded)) == [("A", "B", "A"), ("X", "Y"), ("X", "Z"), ("Z",)]
    assert decoded[-1] == ["Z"]  # u2's second day starts last
    assert "C" not in vocab.ids
    assert np.all(np.diff(sessions.start) >= np.timedelta64(0))
    # Vocabulary: index 0 is padding, ids by training frequency, unknowns map to 0.
    assert vocab.counts[0] == 0 and vocab.ids[0] in {"A", "X", "Z"}
    assert vocab.index("never-seen") == 0
    # With a fixed vocabulary, unknown items stay as 0 unless dropped (then neighbours join).
    held_out = _events(
        [
            ("u9", "A", "2025-02-01 10:00", "view", "h1"),
            ("u9", "NEW", "2025-02-01 10:01", "view", "h1"),
            ("u9", "A", "2025-02-01 10:02", "view", "h1"),
        ]
    )
    kept, _ = build_sessions(held_out, vocab, drop_unknown=False)
    assert kept.items.tolist() == [vocab.index("A"), 0, vocab.index("A")]
    dropped, _ = build_sessions(held_out, vocab)
    assert dropped.items.tolist() == [vocab.index("A")]  # A, A collapsed again


def test_sessions_without_a_session_column_use_user_day() -> None:
    events = _events(
        [
            ("u1", "A", "2025-01-01 10:00", "view", None),
            ("u1", "B", "2025-01-01 11:00", "view", None),
            ("u1", "C", "2025-01-03 11:00", "view", None),
        ]
    ).drop(columns="session_id")
    sessions, vocab = build_sessions(events)
    assert _decode(sessions, vocab) == [["A", "B"], ["C"]]
    with pytest.raises(ValueError, match="item_id"):
        build_sessions(events.drop(columns="item_id"))


def test_pairs_stay_within_the_window_and_the_session() -> None:
    sessions = _csr([1, 2, 3, 4, 5], [6, 7], [8])
    center, context = skipgram_pairs(sessions, 2, np.random.default_rng(0))
    pairs = set(zip(center.tolist(), context.tolist(), strict=True))
    expected = {(a, b) for a in range(1, 6) for b in range(1, 6) if 0 < abs(a - b) <= 2}
    assert pairs == expected | {(6, 7), (7, 6)}
    assert len(center) == len(pairs)  # each (position, position) pair once
    # An item never pairs with itself (A B A at distance 2) nor with padding.
    center, context = skipgram_pairs(_csr([1, 2, 1, 0, 3]), 3, np.random.default_rng(0))
    assert (center != context).all() and (center > 0).all() and (context > 0).all()


def test_subsampling_drops_frequent_items_more() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([0, 3_000] + [100] * 50)  # item 1 is a best-seller (37.5%)
    keep = subsample_keep_prob(counts, 0.02)
    assert keep[0] == 0.0 and keep[1] < 0.3 and (keep[2:] == 1.0).all()
    tokens = rng.choice(len(counts), size=20_000, p=counts / counts.sum())
    sessions = Sessions(tokens, np.arange(0, 20_001, 10), np.zeros(2_000, "datetime64[ns]"))
    full, _ = skipgram_pairs(sessions, 2, np.random.default_rng(1))
    sub, _ = skipgram_pairs(sessions, 2, np.random.default_rng(1), keep)
    kept_frequent = (sub == 1).sum() / (full == 1).sum()
    kept_rare = (sub >= 2).sum() / (full >= 2).sum()
    assert kept_frequent < 0.5 * kept_rare, (kept_frequent, kept_rare)
    assert (subsample_keep_prob(counts, 0.0)[1:] == 1.0).all()


def test_loss_decreases_and_clusters_separate_on_a_toy_corpus(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clusters = [np.arange(1, 11), np.arange(11, 21)]
    sessions = _csr(*[rng.permutation(clusters[s % 2])[:6].tolist() for s in range(400)])
    counts = np.bincount(sessions.items, minlength=21)
    center, context = skipgram_pairs(sessions, 3, rng)
    path = tmp_path / "pairs.npz"
    np.savez(path, center=center, context=context, counts=counts)
    cfg = Item2VecConfig(dim=16, epochs=4, batch_size=128, lr=0.05)
    # one thread: tiny ops, extra threads only spin on a busy shared machine
    config = {"arrays": path, "n_items": 21, "threads": 1, "model": cfg.model_dump()}
    state, metrics = train_plain(config)
    losses = metrics["loss_history"]
    # Zero output vectors at start: every logit is 0 and the loss (1 + K) log 2.
    assert losses[0] < (1 + cfg.negatives) * np.log(2)
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * losses[0]
    vectors = torch.nn.functional.normalize(state["input.weight"], dim=-1).numpy()
    sims = vectors[1:] @ vectors[1:].T
    same = np.equal.outer(np.arange(20) // 10, np.arange(20) // 10)
    assert sims[same & ~np.eye(20, dtype=bool)].mean() > sims[~same].mean()
    assert np.allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, atol=1e-5)


def test_cooccurrence_baseline_and_hit_metrics() -> None:
    sessions = _csr([1, 2], [1, 2], [1, 3], [4, 5])
    center, context = skipgram_pairs(sessions, 1, np.random.default_rng(0))
    counts = np.array([0, 3, 2, 1, 1, 9])  # item 5 is the most popular
    top = cooccurrence_topk(center, context, counts, np.array([0, 1, 3]), k=3)
    assert top[1].tolist() == [2, 3, 5]  # by co-occurrence, then filled by popularity
    assert top[2].tolist() == [1, 5, 2]  # 3 never listed for itself
    assert top[0].tolist() == [5, 1, 2]  # unknown query: popularity
    prev, target = next_item_steps(_csr([1, 2, 0], [3]))
    assert prev.tolist() == [1, 2] and target.tolist() == [2, 0]
    metrics = next_item_metrics(np.array([[3, 2, 5], [0, 1, 2]]), np.array([2, 0]))
    assert metrics == {"hr@3": 0.5, "mrr@3": 0.25}  # a padding target never hits


# --------------------------------------------------------------------------- planted structure
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    """A small generated shop fitted once through Ray Train (1 worker, small object store), on
    one thread: the batches are tiny, and on a shared 2-core machine a second OpenMP thread
    spins against other processes (measured 10-20x slower steps under load)."""
    import ray

    from pipelines.item2vec import fit_item2vec

    home = tmp_path_factory.mktemp("item2vec_home")
    generate(home / "raw", users=600, items=200, days=30, seed=1,
             end_date=date(2026, 1, 1), progress=False)  # fmt: skip
    settings = Settings(
        home=home,
        train=TrainSettings(num_workers=1, cpus_per_worker=1),
        ray=RaySettings(use="always", object_store_memory=256 * 1024 * 1024),
    )
    started_here = not ray.is_initialized()
    # Few pairs here (~2k): small batches and a higher rate give enough steps in 3 epochs.
    cfg = Item2VecConfig(epochs=3, batch_size=128, lr=0.05, seed=0)
    result = fit_item2vec(settings, home / "raw" / "interactions.parquet", home / "run", cfg)
    items = pd.read_parquet(home / "raw" / "items.parquet")
    yield result, items
    if started_here:
        ray.shutdown()


def test_ray_fit_predicts_next_items_well_above_random(planted) -> None:
    result, _ = planted
    m = result.metrics
    print(
        "\nheld-out next item: "
        + json.dumps({k: m[k] for k in ("item2vec", "cooccurrence", "popularity", "random_hr")})
    )
    assert m["fit"]["backend"] == "ray" and m["pairs"] > 1000 and m["events"] > 5000
    # Result.metrics only comes back with a checkpoint (Train V2): the loss history proves it.
    assert len(m["fit"]["loss_history"]) == 3
    assert m["fit"]["loss_history"][-1] < m["fit"]["loss_history"][0]
    random_hr = 20 / 200
    i2v, cooc = m["item2vec"]["hr@20"], m["cooccurrence"]["hr@20"]
    assert i2v > 3 * random_hr
    assert i2v > 2 * m["popularity"]["hr@20"]
    # Sessions stay in one tiny (department, style, category) group here, so counting is near
    # optimal; item2vec's cosine ignores popularity. Robust: both far above random, and
    # item2vec keeps most of the baseline's hit rate.
    assert cooc > 3 * random_hr and i2v > 0.5 * cooc


def test_neighbours_share_style_and_department(planted) -> None:
    result, items = planted
    run = result.run
    attrs = items.set_index("item_id").loc[run.vocab.ids]
    group = (attrs["department"] + "/" + attrs["style"]).to_numpy()
    shared = []
    for item_id, g in zip(run.vocab.ids, group, strict=True):
        neighbours = [n for n, _ in run.similar_items(item_id, k=5)]
        shared.append(np.mean(group[run.vocab.encode(neighbours) - 1] == g))
    _, sizes = np.unique(group, return_counts=True)
    chance = float(((sizes - 1) * sizes).sum() / (len(group) * (len(group) - 1)))
    assert np.mean(shared) > 3 * chance, (np.mean(shared), chance)


def test_saved_run_round_trips_without_pickle(planted, tmp_path: Path) -> None:
    result, _ = planted
    loaded = load_item2vec(Run(result.out_dir))
    np.testing.assert_array_equal(loaded.vectors, result.run.vectors)
    some = loaded.vocab.ids[3]
    assert loaded.similar_items(some, 5) == result.run.similar_items(some, 5)
    manifest = Run(result.out_dir).read_json(MANIFEST)
    assert manifest["metrics"]["item2vec"] == result.metrics["item2vec"]
    assert not list(result.out_dir.glob("*.pkl")) and not list(result.out_dir.glob("*.npz"))
    with pytest.raises(KeyError, match="not in the item2vec vocabulary"):
        loaded.similar_items("i999999")
    # A fresh model through save/load: every tensor and the vocabulary survive exactly.
    vocab = SessionVocabulary(np.array(["a", "b", "c"], dtype=object), np.array([0, 5, 3, 1]))
    model = Item2Vec(vocab.size, 8)
    torch.nn.init.normal_(model.output.weight)
    cfg = Item2VecConfig(dim=8)
    again = load_item2vec(save_item2vec(Run(tmp_path), model, vocab, cfg, {"note": 1}))
    for key, value in model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value)
    assert again.vocab.ids == ["a", "b", "c"]
    assert again.vocab.counts.tolist() == [0, 5, 3, 1]
    assert again.config == cfg and again.manifest["metrics"] == {"note": 1}
    with pytest.raises(ValueError, match="vocabulary"):
        save_item2vec(Run(tmp_path), Item2Vec(7, 8), vocab, cfg)


# --------------------------------------------------------------------------- session model
# Two clusters of 10 items, sessions inside one; items 21 and 22 never appear. No sub-sampling:
# on 20 items every one is "frequent" and would mostly be dropped.
# decay 0: the last item alone, so that a cluster's items rank first whatever came before.
TOY = {"dim": 16, "epochs": 4, "batch_size": 128, "lr": 0.05, "subsample": 0.0, "decay": 0.0}


def _toy_sessions(n: int, seed: int = 0) -> Sessions:
    rng = np.random.default_rng(seed)
    clusters = [np.arange(1, 11), np.arange(11, 21)]
    return _csr(*[rng.permutation(clusters[s % 2])[:6].tolist() for s in range(n)])


@pytest.fixture(scope="module")
def toy_model() -> Item2VecSession:
    return Item2VecSession.fit(_toy_sessions(400), 23, **TOY)


def test_session_model_learns_the_clusters(toy_model: Item2VecSession) -> None:
    assert MODELS["item2vec"] is Item2VecSession
    assert toy_model.fit_metrics["backend"] == "in-process" and toy_model.fit_metrics["pairs"] > 0
    assert toy_model.known.tolist() == [False] + [True] * 20 + [False, False]
    prefixes = [np.array([3]), np.array([15, 12]), np.array([14, 2, 7])]
    scores = toy_model.score(prefixes)
    assert scores.shape == (3, 23) and scores.dtype == np.float32 and (scores >= 0).all()
    for row, cluster in zip(scores, (0, 1, 0), strict=True):
        top = np.argsort(-row, kind="stable")[:8]
        assert ((top - 1) // 10 == cluster).all(), (top, row)
        inside = row[1 + 10 * cluster : 11 + 10 * cluster]
        outside = row[11 - 10 * cluster : 21 - 10 * cluster]
        assert np.sort(inside)[1] > outside.max()  # all but the item just viewed
    # The item just viewed is no evidence for itself (decay 0: only the last item counts).
    assert scores[0, 3] == 0 and scores[1, 12] == 0 and scores[2, 7] == 0


def test_session_model_scores_padding_unknown_items_and_empty_prefixes_0(
    toy_model: Item2VecSession,
) -> None:
    scores = toy_model.score([np.array([4, 9]), np.array([], dtype=np.int64), np.array([0, 21])])
    assert (scores[:, 0] == 0).all() and (scores[:, 21:] == 0).all()
    assert (scores[1] == 0).all() and (scores[2] == 0).all()  # nothing known: no evidence
    assert (scores[0, 1:21] > 0).sum() >= 9
    # 0s and unknown items in a prefix are skipped: the last *known* item is scored from.
    np.testing.assert_array_equal(
        toy_model.score([np.array([4, 9, 0, 22])]), toy_model.score([np.array([9])])
    )
    with pytest.raises(ValueError, match="outside 0..22"):
        toy_model.score([np.array([23])])


def test_session_model_decay_weighs_older_items(toy_model: Item2VecSession) -> None:
    last = toy_model
    decayed = Item2VecSession(23, toy_model.params | {"decay": 0.5}, toy_model.vectors)
    mixed = [np.array([12, 3])]  # an item of cluster 1, then one of cluster 0
    np.testing.assert_array_equal(last.score(mixed), last.score([np.array([3])]))
    a, b = last.score(mixed)[0], decayed.score(mixed)[0]
    assert b[11:21].mean() > a[11:21].mean() and b[1:11].mean() < a[1:11].mean()
    # The last item is no evidence for itself, an earlier one is (weight 0.5 of 1.5 here) ...
    cos = float(decayed.vectors[3] @ decayed.vectors[5])
    both = decayed.score([np.array([5, 3])])[0]
    assert cos > 0 and both[3] == pytest.approx(cos * 0.5 / 1.5, abs=1e-6)
    assert both[5] == pytest.approx((0.5 + cos) / 1.5, abs=1e-6)
    # ... unless it is the last item again: 3 5 3 scores 3 from 5 alone (weights 0.25, 0.5, 1).
    again = decayed.score([np.array([3, 5, 3])])[0]
    assert again[3] == pytest.approx(cos * 0.5 / 1.75, abs=1e-6)


def test_session_model_save_load_round_trip(toy_model: Item2VecSession, tmp_path: Path) -> None:
    run = Run(tmp_path)
    toy_model.save(run, "session_item2vec")
    again = Item2VecSession.load(run, "session_item2vec")
    prefixes = [np.array(p) for p in ([3], [15, 12], [14, 2, 7], [], [0, 21], [5, 5, 18])]
    np.testing.assert_array_equal(again.score(prefixes), toy_model.score(prefixes))
    assert again.params == toy_model.params and again.n_items == toy_model.n_items
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.npz"))


def test_session_model_parameters_are_checked() -> None:
    defaults = Item2VecSession.defaults
    assert {**Item2VecConfig().model_dump(), "decay": 1.0, "recent": 10} == defaults
    for key, values in Item2VecSession.grid.items():
        assert key in defaults and len(values) >= 2
    with pytest.raises(ValueError, match="decy"):
        resolve_params(Item2VecSession, {"decy": 0.5})
    with pytest.raises(ValueError, match="decay"):
        Item2VecSession.fit(_toy_sessions(10), 23, decay=2.0)
    with pytest.raises(ValueError, match="n_items"):
        Item2VecSession.fit(_toy_sessions(10), 15)
    with pytest.raises(ValueError, match="nothing to learn"):
        Item2VecSession.fit(_csr([3], [4, 4]), 23)


def test_session_model_min_count_drops_rare_items() -> None:
    sessions = _csr(*([[1, 2, 3]] * 30 + [[1, 4, 2]]))  # item 4 seen once
    model = Item2VecSession.fit(sessions, 6, **(TOY | {"epochs": 1, "min_count": 2}))
    assert model.known.tolist() == [False, True, True, True, False, False]
    assert (model.score([np.array([1]), np.array([4])])[:, 4:] == 0).all()


def test_session_model_fits_through_ray_like_the_plain_fit(planted, tmp_path: Path) -> None:
    """After the planted fixture: Ray is already up, and goes down with it."""
    settings = Settings(
        home=tmp_path,
        train=TrainSettings(num_workers=1, cpus_per_worker=1),
        ray=RaySettings(use="always", object_store_memory=256 * 1024 * 1024),
    )
    sessions = _toy_sessions(200, seed=1)
    params = TOY | {"epochs": 2}
    on_ray = Item2VecSession.fit_ray(settings, sessions, 23, **params)
    plain = Item2VecSession.fit(sessions, 23, threads=1, **params)
    assert on_ray.fit_metrics["backend"] == "ray"
    assert len(on_ray.fit_metrics["loss_history"]) == 2  # the metrics came back with weights
    prefixes = [np.array([3]), np.array([15, 12]), np.array([14, 2, 7])]
    np.testing.assert_allclose(on_ray.score(prefixes), plain.score(prefixes), atol=1e-5)
