"""Item text embeddings in the two-tower model: `recsys embed` -> `recsys train` -> serving.

The model tests run on a small planted shop whose shoppers' taste lives only in the item text
(three clusters of text vectors, attributes drawn independently of them), so that anything the
towers learn about the clusters has to come through the text table. The pipeline tests read
the session's ``recsys demo`` run (conftest), which embeds the catalogue with MiniLM before
training; only one extra CLI call (the cached re-run) is paid here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.encoding import ItemEncoder, UserEncoder
from models.two_tower import (
    ITEM_INPUTS,
    NumpyUserTower,
    TwoTower,
    TwoTowerConfig,
    load_two_tower,
    manifest_entry,
    save_two_tower,
    to_tensors,
)
from pipelines.train import item_text_table, zero_untrained_ids
from pipelines.two_tower_fit import train_plain
from recsys.core.arrays import unit_rows
from recsys.core.run import MANIFEST, Run
from recsys.core.schema import USER_NUMERIC, table_path
from recsys.core.settings import Settings, TrainSettings
from tests.conftest import run_cli, tiny_catalog
from tests.test_embed import read_embeddings
from tests.test_training_speed import fit_config

CLUSTERS, PER_CLUSTER, TEXT_DIM = 3, 20, 16
COLD = "i060"  # in the catalogue, never bought: its text is a copy of i000's


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Encoders, text table and a fitted text model on the planted shop (~2 s on 2 cores)."""
    rng = np.random.default_rng(0)
    n_items = CLUSTERS * PER_CLUSTER
    catalog = tiny_catalog(n_items + 1)  # random attributes; the last row is the cold item
    cluster = np.arange(n_items + 1) % CLUSTERS
    centres = unit_rows(rng.normal(size=(CLUSTERS, TEXT_DIM))).astype(np.float32)
    text = unit_rows(centres[cluster] + 0.35 * rng.normal(size=(n_items + 1, TEXT_DIM)))
    text[n_items] = text[0]  # the cold item is described exactly as i000
    cluster[n_items] = cluster[0]

    n_users = 90
    by_cluster = [catalog["item_id"][:n_items][cluster[:n_items] == c].tolist()
                  for c in range(CLUSTERS)]  # fmt: skip
    taste = np.arange(n_users) % CLUSTERS
    users = pd.DataFrame({c: rng.integers(0, 50, n_users).astype(float) for c in USER_NUMERIC})
    users["user_id"] = [f"u{u:02d}" for u in range(n_users)]
    users["purchased_items"] = [list(rng.choice(by_cluster[t], 3)) for t in taste]
    frame = users.loc[np.repeat(np.arange(n_users), 10)].reset_index(drop=True)
    bought = [rng.choice(by_cluster[t]) for t in np.repeat(taste, 10)]
    rows = catalog.set_index("item_id").loc[bought].reset_index()

    item_enc = ItemEncoder.fit(catalog, catalog)
    user_enc = UserEncoder.fit(frame, history=4)
    assert item_enc.item_ids == catalog["item_id"].tolist()  # vocabulary order = catalogue
    table = np.zeros((item_enc.n_items, TEXT_DIM), dtype=np.float32)
    table[1:] = text  # float32, as the embedding files hold them
    arrays = user_enc.encode(frame, item_enc) | item_enc.encode(rows)
    counts = np.bincount(arrays["item_idx"], minlength=item_enc.n_items).astype(float)
    assert counts[item_enc.index(COLD)] == 0
    path = tmp_path_factory.mktemp("text_tower") / "train_arrays.npz"
    arrays["item_text"] = table
    config = fit_config(
        path, user_enc, item_enc, arrays, catalog, 6, dim=16, id_dropout=0.5, text_dim=TEXT_DIM
    )
    state, metrics = train_plain(config)
    model = TwoTower(TwoTowerConfig(**config["model"]))
    model.load_state_dict(state)
    model.eval()
    zero_untrained_ids(model, counts)
    return {"model": model, "metrics": metrics, "items": item_enc, "users": user_enc,
            "catalog": catalog, "text": table, "cluster": cluster, "frame": users}  # fmt: skip


def _item_batch(shop: dict) -> dict[str, torch.Tensor]:
    encoded = to_tensors(shop["items"].encode(shop["catalog"]))
    return {k: encoded[k] for k in ITEM_INPUTS}


def _user_batch(shop: dict) -> dict[str, torch.Tensor]:
    return to_tensors(shop["users"].encode(shop["frame"], shop["items"]))


@torch.no_grad()
def test_the_towers_train_on_the_text_table_and_read_it(shop: dict) -> None:
    model, metrics = shop["model"], shop["metrics"]
    losses = metrics["loss_history"]
    assert losses[-1] < losses[0], losses
    assert torch.equal(model.item_text, torch.as_tensor(shop["text"]))  # came through the fit
    items, users = model.item_vectors(_item_batch(shop)), model.user_vectors(_user_batch(shop))
    shifted = shop["text"].copy()
    # each item gets the text of the item two rows up: another cluster's (by 1 row, i000
    # would get the cold item's text, a copy of its own)
    shifted[1:] = np.roll(shifted[1:], 2, axis=0)
    model.set_item_text(torch.as_tensor(shifted))  # nothing else changes
    try:
        moved_items = 1 - (items * model.item_vectors(_item_batch(shop))).sum(1)
        moved_users = 1 - (users * model.user_vectors(_user_batch(shop))).sum(1)
    finally:
        model.set_item_text(torch.as_tensor(shop["text"]))
    assert (moved_items > 1e-4).all() and (moved_users > 1e-4).all()
    with pytest.raises(ValueError, match="item text table shape"):
        model.set_item_text(torch.zeros(3, TEXT_DIM))
    # what the projection reads is centred on the catalogue's mean text, but an item without
    # text (a zero row) reads nothing, not minus the mean
    assert torch.allclose(model.text_mean, torch.as_tensor(shop["text"][1:].mean(0)), atol=1e-6)
    assert torch.equal(model._project(torch.zeros(1, TEXT_DIM))[0], model.text_proj.bias)
    # texts that are all alike (one template for the whole catalogue) carry nothing: their
    # rounding noise is not scaled up to TEXT_NORM, every item projects to the bias
    alike = np.tile(shop["text"][1], (len(shop["text"]), 1))
    alike[0] = 0.0
    model.set_item_text(torch.as_tensor(alike))
    try:
        assert model.text_scale.item() == 0.0
        bias = model.text_proj.bias.expand(len(alike) - 1, -1)
        assert torch.allclose(model._project(model.item_text[1:]), bias)
    finally:
        model.set_item_text(torch.as_tensor(shop["text"]))
    assert model.text_scale.item() > 0


@torch.no_grad()
def test_the_numpy_user_tower_gives_the_torch_vectors(shop: dict) -> None:
    """What the API computes per visitor (numpy) is what training and evaluation compute
    (torch), text pooling and unknown users included."""
    model = shop["model"]
    inputs = shop["users"].encode(shop["frame"], shop["items"])
    inputs["user_idx"][:5] = 0  # unknown visitors: no id row, history and features only
    inputs["history"][5:8] = 0  # nothing bought yet
    expected = model.user_vectors(to_tensors(inputs)).numpy()
    tower = NumpyUserTower.from_model(model)
    got = tower(inputs["user_idx"], inputs["user_numeric"], inputs["history"])
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    one = tower(inputs["user_idx"][9:10], inputs["user_numeric"][9:10], inputs["history"][9:10])
    np.testing.assert_allclose(one[0], expected[9], atol=1e-5)


@torch.no_grad()
def test_a_cold_item_lands_next_to_the_item_it_is_described_like(shop: dict) -> None:
    model, items, cluster = shop["model"], shop["items"], shop["cluster"]
    assert not model.item_id.weight[items.index(COLD)].any()  # untrained id: zeroed
    vectors = model.item_vectors(_item_batch(shop)).numpy()
    cold = items.index(COLD) - 1
    cosine = np.delete(vectors @ vectors[cold], cold)
    twin = cosine[0]  # i000: same text, different attributes, a trained id
    others = cosine[np.delete(cluster, cold) != cluster[0]]  # items of other clusters
    # 0.93-1.00 against at most 0.18-0.53 over five seeds of this shop
    assert twin > others.max(), (twin, np.quantile(others, [0.5, 1.0]))


def _save(path: Path, model: TwoTower, users, items) -> None:
    run = Run(path)
    path.mkdir(parents=True)
    save_two_tower(run, model, users, items)
    run.write_manifest(manifest_entry(model))


def test_a_text_run_round_trips_and_old_runs_still_load(shop: dict, tmp_path: Path) -> None:
    model, users, items = shop["model"], shop["users"], shop["items"]
    _save(tmp_path / "text", model, users, items)
    loaded, *_ = load_two_tower(Run(tmp_path / "text"))
    assert loaded.cfg.text_dim == TEXT_DIM
    for name in ("item_text", "text_mean", "text_scale"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    with torch.no_grad():
        batch = _item_batch(shop)
        assert torch.allclose(loaded.item_vectors(batch), model.item_vectors(batch))
    # a run saved before text embeddings: no text_dim in its manifest, no item_text weights
    old_cfg = {k: v for k, v in model.cfg.to_dict().items() if k != "text_dim"}
    _save(tmp_path / "old", TwoTower(TwoTowerConfig(**old_cfg)), users, items)
    manifest = json.loads((tmp_path / "old" / MANIFEST).read_text())
    del manifest["model_config"]["text_dim"]
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(manifest))
    old, *_ = load_two_tower(Run(tmp_path / "old"))
    assert old.cfg.text_dim == 0 and old.text_proj is None
    with pytest.raises(ValueError, match="text_dim=0"):
        old.set_item_text(model.item_text)


def _write_embeddings(path: Path, ids: list[str], vectors: np.ndarray, kind: str = "text") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"item_id": ids, "vector": pa.array(vectors.tolist(), pa.list_(pa.float32()))})
    pq.write_table(table.replace_schema_metadata({"recsys.embed.kind": kind}), path)


def test_the_text_table_follows_the_vocabulary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path)
    vocab = ["a", "b", "c", "d"]
    _write_items(settings, {"a": "red dress", "b": "blue jeans", "c": "boots", "d": "sandals"})
    caplog.set_level(logging.WARNING, logger="pipelines.train")
    assert item_text_table(settings, vocab) is None
    assert "recsys embed" in caplog.text  # says how to add them
    path = settings.item_embeddings_path("text")
    vectors = unit_rows(np.random.default_rng(0).normal(size=(4, 8))).astype(np.float32)
    _write_embeddings(path, ["c", "a", "zz", "b"], vectors)  # file order != vocabulary
    caplog.clear()
    table = item_text_table(settings, vocab)
    assert table is not None and table.shape == (5, 8) and table.dtype == np.float32
    np.testing.assert_array_equal(table[[1, 2, 3]], vectors[[1, 3, 0]])  # a, b, c
    assert not table[0].any() and not table[4].any()  # padding; "d" has no text
    assert "1 of 4 catalogue items have no text embedding" in caplog.text
    off = settings.model_copy(update={"train": TrainSettings(text_embeddings="off")})
    assert item_text_table(off, vocab) is None
    with pytest.raises(ValueError, match="another catalogue"):
        item_text_table(settings, ["x", "y"])
    _write_embeddings(path, ["a"], vectors[:1], kind="image")
    with pytest.raises(ValueError, match=r"item_text_embeddings\.parquet is not text"):
        item_text_table(settings, vocab)


def _write_items(settings: Settings, titles: dict[str, str | None]) -> None:
    """A validated items table: item ids and titles, every other text column empty."""
    path = table_path(settings.validated_dir, "items")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"item_id": list(titles), "title": list(titles.values()),
                          "description": None, "category": None, "colour": "unknown"})  # fmt: skip
    frame.to_parquet(path)


def test_items_without_text_get_zero_rows_and_none_with_text_means_no_table(
    tmp_path: Path,
) -> None:
    """``recsys embed`` encodes an empty text like any other: the one vector every item
    without text shares must not reach the towers (on an id-only catalogue it was the whole
    table, and the two-tower ranked like popularity)."""
    settings = Settings(home=tmp_path)
    vocab = ["a", "b", "c"]
    vectors = unit_rows(np.random.default_rng(1).normal(size=(3, 8))).astype(np.float32)
    _write_embeddings(settings.item_embeddings_path("text"), vocab, vectors)
    _write_items(settings, {"a": "red dress", "b": None, "c": "  "})
    table = item_text_table(settings, vocab)
    assert table is not None
    np.testing.assert_array_equal(table[1], vectors[0])
    assert not table[2:].any()  # b, c: no title, description or attribute
    _write_items(settings, {"a": None, "b": None, "c": None})
    assert item_text_table(settings, vocab) is None


# --------------------------------------------------------------------------- the pipeline
def test_recsys_embed_writes_every_item_and_reruns_from_the_cache(
    pipeline_home: tuple[Path, str], pipeline_settings: Settings
) -> None:
    home, output = pipeline_home
    assert "✓ embed text (Ray Data)" in output  # the demo embeds before it trains
    path = pipeline_settings.item_embeddings_path("text")
    items = pd.read_parquet(table_path(pipeline_settings.validated_dir, "items"))
    ids, vectors = read_embeddings(path)
    assert ids == items["item_id"].tolist()
    assert vectors.shape == (len(items), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = run_cli(home, "embed", "--no-ray")
    assert f"{len(items):,} items: {len(items):,} cached, 0 encoded" in again.stdout
    assert np.array_equal(read_embeddings(path)[1], vectors)


def test_train_feeds_the_text_embeddings_to_both_towers(
    pipeline_home: tuple[Path, str], pipeline_settings: Settings
) -> None:
    _, output = pipeline_home
    assert "item text embeddings: 384-d, in both towers" in output
    run = Run.current(pipeline_settings.artifacts_dir)
    assert run.manifest["model_config"]["text_dim"] == 384
    assert run.manifest["train_config"]["text_embeddings"] == "auto"
    model, _, items = load_two_tower(run)
    ids, vectors = read_embeddings(pipeline_settings.item_embeddings_path("text"))
    row = {item: i for i, item in enumerate(ids)}
    expected = vectors[[row[i] for i in items.item_ids]]
    np.testing.assert_array_equal(model.item_text[1:].numpy(), expected)  # vocabulary order
    assert not model.item_text[0].any()
