"""GRU4Rec: the prefix examples, a planted successor structure learned by the full and the
sampled loss, the scoring contract, the safetensors round trip, and one fit through Ray Train
that matches the plain fit of the same seed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.session.base import MODELS
from models.session.data import Sessions
from models.session.gru4rec import GRU4Rec, prefix_examples
from recsys.core.run import Run
from recsys.core.settings import RaySettings, Settings, TrainSettings

N_ITEMS = 30  # indices 1..29; item k is always followed by k + 1 (29 by 1)
FAST = {"epochs": 5, "batch_size": 64, "lr": 0.01, "dim": 16, "hidden": 32, "seed": 0}


def _csr(sessions: list[np.ndarray]) -> Sessions:
    lengths = [len(s) for s in sessions]
    return Sessions(
        np.concatenate(sessions).astype(np.int64),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.zeros(len(sessions), dtype="datetime64[ns]"),
    )


def _successor_sessions(n: int, seed: int) -> list[np.ndarray]:
    """Sessions of random start and length in which item k is always followed by k + 1."""
    rng = np.random.default_rng(seed)
    starts, lengths = rng.integers(1, N_ITEMS, n), rng.integers(2, 9, n)
    return [
        (s - 1 + np.arange(k)) % (N_ITEMS - 1) + 1 for s, k in zip(starts, lengths, strict=True)
    ]


def _steps(sessions: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    prefixes = [s[:i] for s in sessions for i in range(1, len(s))]
    return prefixes, np.array([s[i] for s in sessions for i in range(1, len(s))])


@pytest.fixture(scope="module")
def toy() -> GRU4Rec:
    return GRU4Rec.fit(_csr(_successor_sessions(400, seed=0)), N_ITEMS + 3, **FAST)


# --------------------------------------------------------------------------- unit
def test_examples_are_every_prefix_left_padded_and_skip_unknown_items() -> None:
    prefixes, targets = prefix_examples(_csr([np.array([5, 6, 0, 7]), np.array([9])]), 2)
    assert prefixes.dtype == np.int32 and targets.dtype == np.int32
    assert prefixes.tolist() == [[0, 5], [5, 6]]  # the unknown item dropped, 6 -> 7 adjacent
    assert targets.tolist() == [6, 7]  # a one-item session has no example


@pytest.mark.parametrize("loss", [{}, {"full_softmax_items": 10, "negatives": 8}])
def test_learns_a_successor_structure_popularity_cannot(loss: dict) -> None:
    """Full softmax, and (catalogue above ``full_softmax_items``) in-batch + sampled negatives."""
    model = GRU4Rec.fit(_csr(_successor_sessions(400, seed=0)), N_ITEMS, **FAST | loss)
    prefixes, targets = _steps(_successor_sessions(100, seed=1))
    hr1 = float((model.score(prefixes).argmax(axis=1) == targets).mean())
    _, train_targets = _steps(_successor_sessions(400, seed=0))
    popular = np.bincount(train_targets).argmax()
    assert hr1 > 0.95, hr1
    assert float((targets == popular).mean()) < 0.1
    assert model.fit_metrics["loss_history"][-1] < model.fit_metrics["loss_history"][0]


def test_scores_are_probabilities_never_of_padding_or_unlearned_items(toy: GRU4Rec) -> None:
    scores = toy.score([np.array([], np.int64), np.array([0, 0]), np.array([4]),
                        np.array([0, 4]), np.array([4, 999])])  # fmt: skip
    assert scores.dtype == np.float32 and scores.shape == (5, N_ITEMS + 3)
    assert not scores[:2].any()  # empty, or only unknown items: no opinion
    assert not scores[:, 0].any()
    assert not scores[:, N_ITEMS:].any()  # never a training target: 0, never ranked first
    np.testing.assert_allclose(scores[2:].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(scores[2], scores[3])  # unknown items are skipped
    np.testing.assert_array_equal(scores[2], scores[4])  # so are indices outside the table
    assert scores[2].argmax() == 5


def test_a_prefix_scores_the_same_alone_or_batched_with_longer_ones(toy: GRU4Rec) -> None:
    """Padding is never read: a score does not depend on the rest of the batch."""
    short, long = np.array([7, 8]), np.arange(1, 26)
    alone = toy.score([short])[0]
    batched = toy.score([long, short] * 40)
    np.testing.assert_allclose(batched[1], alone, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched[-1], alone, rtol=1e-5, atol=1e-7)


def test_scoring_restores_the_callers_torch_threads(toy: GRU4Rec) -> None:
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        toy.threads = 2
        two = toy.score([np.array([7, 8])])
        assert torch.get_num_threads() == 1
    finally:
        toy.threads = 1
        torch.set_num_threads(previous)
    np.testing.assert_allclose(two, toy.score([np.array([7, 8])]), rtol=1e-5, atol=1e-7)


def test_round_trip_through_a_run_gives_identical_scores(toy: GRU4Rec, tmp_path: Path) -> None:
    run = Run(tmp_path / "run")
    toy.save(run, "session_gru4rec")
    assert sorted(p.name for p in run.path.iterdir()) == [
        "session_gru4rec.safetensors",
        "session_gru4rec_params.json",
    ]
    loaded = MODELS["gru4rec"].load(run, "session_gru4rec")
    prefixes, _ = _steps(_successor_sessions(20, seed=2))
    assert loaded.params == toy.params and loaded.n_items == toy.n_items
    np.testing.assert_array_equal(loaded.score(prefixes), toy.score(prefixes))


def test_bad_parameters_are_named() -> None:
    sessions = _csr(_successor_sessions(10, seed=0))
    with pytest.raises(ValueError, match=r"lr=-1.*greater than 0"):
        GRU4Rec.fit(sessions, N_ITEMS, lr=-1)
    with pytest.raises(ValueError, match="hiden"):
        GRU4Rec.fit(sessions, N_ITEMS, hiden=64)
    with pytest.raises(ValueError, match="n_items=5"):
        GRU4Rec.fit(sessions, 5)
    with pytest.raises(ValueError, match="no training example"):
        GRU4Rec.fit(_csr([np.array([3])]), N_ITEMS)


# --------------------------------------------------------------------------- Ray Train
@pytest.fixture(scope="module")
def ray_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private Ray (1 worker on 1 CPU, small object store), temp dir short for Ray's socket
    paths; shut down after unless it was already running."""
    import ray

    ray_tmp = Path(tempfile.mkdtemp(prefix="gru-ray-", dir="/tmp"))
    settings = Settings(
        home=tmp_path_factory.mktemp("gru4rec_home"),
        train=TrainSettings(num_workers=1, cpus_per_worker=1),
        ray=RaySettings(use="always", object_store_memory=256 * 1024 * 1024, temp_dir=ray_tmp),
    )
    started_here = not ray.is_initialized()
    yield settings
    if started_here:
        ray.shutdown()
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.e2e
def test_ray_fit_scores_like_the_plain_fit_of_the_same_seed(ray_settings: Settings) -> None:
    sessions = _csr(_successor_sessions(200, seed=0))
    params = FAST | {"epochs": 1}
    on_ray = GRU4Rec.fit_ray(ray_settings, sessions, N_ITEMS, **params)
    plain = GRU4Rec.fit(sessions, N_ITEMS, threads=1, **params)
    assert on_ray.fit_metrics["backend"] == "ray"
    assert len(on_ray.fit_metrics["loss_history"]) == 1  # the metrics came back with weights
    prefixes, _ = _steps(_successor_sessions(20, seed=1))
    np.testing.assert_allclose(on_ray.score(prefixes), plain.score(prefixes), atol=1e-5)
