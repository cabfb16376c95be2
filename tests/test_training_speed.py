"""The two-tower epoch loop that Ray Train and plain PyTorch share (pipelines.two_tower_fit)."""

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from models.encoding import ItemEncoder, UserEncoder
from models.two_tower import TwoTower, TwoTowerConfig
from pipelines.two_tower_fit import _optimizers, fit_two_tower, train_plain
from recsys.core.schema import ITEM_NUMERIC, USER_NUMERIC
from tests.conftest import tiny_catalog, tiny_users

LOOP = dict(batch_size=64, lr=0.02, weight_decay=0.0, temperature=0.1, threads=1, seed=0)


def fit_config(
    path: Path,
    users: UserEncoder,
    items: ItemEncoder,
    arrays: dict[str, np.ndarray],
    catalog: pd.DataFrame,
    epochs: int,
    **model: Any,
) -> dict:
    """A train_func config over the encoded ``arrays``, written to ``path`` as Ray's workers
    read them (an ``item_text`` array among them is the text table); ``model``: config fields."""
    counts = np.bincount(arrays["item_idx"], minlength=items.n_items) + 1.0
    log_q = np.log(counts / counts.sum()).astype(np.float32)
    np.savez(path, log_q=log_q, item_table=items.attribute_table(catalog), **arrays)
    sizes = (users.n_users, items.n_items, items.attr_sizes(), len(USER_NUMERIC), len(ITEM_NUMERIC))
    cfg = TwoTowerConfig(*sizes, **model)
    return {"arrays": str(path), "model": cfg.to_dict(), "epochs": epochs, **LOOP}


def _config(tmp_path: Path) -> dict:
    """A config over 600 encoded (user, item) examples."""
    catalog = tiny_catalog()
    frame = pd.concat([tiny_users(catalog)] * 20, ignore_index=True)
    items = ItemEncoder.fit(catalog, catalog)
    users = UserEncoder.fit(frame, history=4)
    bought = catalog.sample(len(frame), replace=True, random_state=0).reset_index(drop=True)
    arrays = users.encode(frame, items) | items.encode(bought)
    return fit_config(tmp_path / "train_arrays.npz", users, items, arrays, catalog, 3, dim=8)


def test_plain_fit_is_deterministic_and_reports_like_ray(tmp_path: Path) -> None:
    config = _config(tmp_path)
    state, metrics = train_plain(config)
    again, _ = train_plain(config)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert metrics["epoch"] == 3 and metrics["examples"] == 600
    losses = metrics["loss_history"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # the loop's seconds are its epochs', and set-up plus loop fit inside the call's wall time
    # (what benchmarks/training_speed.py measures Ray's overhead against)
    reports: list[dict] = []
    started = time.perf_counter()
    _, final = fit_two_tower(config, report=reports.append)
    wall = time.perf_counter() - started
    assert len(reports) == 2  # every epoch but the last, which comes back with the weights
    epochs = sum(r["epoch_seconds"] for r in [*reports, final])
    assert final["loop_seconds"] == pytest.approx(epochs, abs=0.01)
    # (each is rounded to the millisecond: 4 roundings may add up to 2 ms over the wall time)
    assert final["setup_seconds"] + final["loop_seconds"] <= wall + 0.002
    # a second rank sees the other half of the examples and returns no weights
    state, final = fit_two_tower(config, 1, 2)
    assert state is None and final["examples"] == 300


def test_sparse_id_tables_train_to_a_similar_loss(tmp_path: Path) -> None:
    config = _config(tmp_path)
    model = TwoTower(TwoTowerConfig(**config["model"]))
    sparse_opt, dense_opt = _optimizers(model, config)  # the default: sparse id tables
    assert isinstance(sparse_opt, torch.optim.SparseAdam) and model.item_id.sparse
    tables = {id(model.user_id.weight), id(model.item_id.weight), id(model.history_item.weight)}
    assert {id(p) for group in sparse_opt.param_groups for p in group["params"]} == tables
    assert not tables & {id(p) for group in dense_opt.param_groups for p in group["params"]}
    (dense_only,) = _optimizers(TwoTower(TwoTowerConfig(**config["model"])),
                                config | {"sparse": False})  # fmt: skip
    assert isinstance(dense_only, torch.optim.Adam)
    _, sparse = train_plain(config)
    _, dense = train_plain(config | {"sparse": False})
    assert abs(sparse["loss"] - dense["loss"]) < 0.1 * dense["loss"]
    # SparseAdam has no weight decay: with one, everything trains with dense Adam
    _, decayed = train_plain(config | {"weight_decay": 1e-6})
    _, dense_decayed = train_plain(config | {"sparse": False, "weight_decay": 1e-6})
    assert decayed["loss"] == dense_decayed["loss"]


@pytest.mark.parametrize("extra", [{}, {"weight_decay": 1e-4}], ids=["sparse", "dense"])
def test_without_user_ids_the_user_table_stays_zero_and_the_rest_trains(
    tmp_path: Path, extra: dict
) -> None:
    """``user_ids=False``: a user is their history and features; neither optimizer may move
    the (frozen, zero) id table, weight decay included, while the loss still falls."""
    config = _config(tmp_path) | extra
    config["model"] = config["model"] | {"user_ids": False}
    model = TwoTower(TwoTowerConfig(**config["model"]))
    assert not model.user_id.weight.any() and not model.user_id.weight.requires_grad
    params = {id(p) for opt in _optimizers(model, config) for g in opt.param_groups
              for p in g["params"]}  # fmt: skip
    assert id(model.user_id.weight) not in params and id(model.item_id.weight) in params
    state, metrics = train_plain(config)
    assert not state["user_id.weight"].any()
    assert metrics["loss_history"][-1] < metrics["loss_history"][0]
