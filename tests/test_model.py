"""Two-tower model pieces: encoders, towers, loss, and the safetensors round trip."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.encoding import ItemEncoder, UserEncoder
from models.two_tower import (
    TwoTower,
    TwoTowerConfig,
    in_batch_softmax_loss,
    load_two_tower,
    manifest_entry,
    save_two_tower,
)
from recsys.core.run import Run
from recsys.core.schema import ITEM_NUMERIC, USER_NUMERIC
from tests.conftest import tiny_catalog, tiny_users


def _model(users: UserEncoder, items: ItemEncoder, catalog: pd.DataFrame) -> TwoTower:
    cfg = TwoTowerConfig(
        users.n_users,
        items.n_items,
        items.attr_sizes(),
        len(USER_NUMERIC),
        len(ITEM_NUMERIC),
        dim=8,
        id_dropout=0.5,
    )
    model = TwoTower(cfg)
    model.set_item_table(torch.as_tensor(items.attribute_table(catalog)))
    return model


def _batch(users: UserEncoder, items: ItemEncoder, catalog: pd.DataFrame) -> dict:
    """30 (user, item) rows: each user of ``_users`` paired with one catalogue item."""
    arrays = users.encode(tiny_users(catalog), items) | items.encode(catalog.iloc[:30])
    return {k: torch.as_tensor(v) for k, v in arrays.items()}


def test_encoders_map_unknowns_to_zero_and_keep_shapes() -> None:
    catalog = tiny_catalog()
    items = ItemEncoder.fit(catalog, catalog)
    users = UserEncoder.fit(tiny_users(catalog), history=4)
    enc = users.encode(tiny_users(catalog), items)
    assert enc["history"].shape == (30, 4)
    assert (enc["history"][0] == 0).all() and (enc["history"][1, :3] > 0).all()
    assert np.isfinite(enc["user_numeric"]).all()
    unknown = users.encode(pd.DataFrame({"user_id": ["stranger"]}), items)
    assert unknown["user_idx"][0] == 0 and (unknown["user_numeric"] == 0).all()
    item_enc = items.encode(catalog.assign(colour=["mauve"] * len(catalog)))
    assert (item_enc["colour"] == 0).all() and (item_enc["item_idx"] > 0).all()


def test_online_row_encodes_like_the_training_batch() -> None:
    """Serving encodes Feast's ``to_dict()`` columns; training encodes a DataFrame."""
    catalog = tiny_catalog()
    items = ItemEncoder.fit(catalog, catalog)
    frame = tiny_users(catalog)
    users = UserEncoder.fit(frame, history=4)
    batch = users.encode(frame, items)
    for row in (0, 1, 5):
        values = {c: [None if pd.isna(v) else v] if not isinstance(v, list) else [v]
                  for c, v in frame.iloc[row].items()}  # fmt: skip
        one = users.encode(values, items)
        for key, array in one.items():
            np.testing.assert_allclose(array[0], batch[key][row], rtol=1e-6)


def test_towers_are_normalised_and_id_dropout_only_trains() -> None:
    catalog = tiny_catalog()
    items = ItemEncoder.fit(catalog, catalog)
    users = UserEncoder.fit(tiny_users(catalog), history=4)
    model = _model(users, items, catalog)
    batch = _batch(users, items, catalog)
    model.eval()
    u, i = model(batch)
    assert u.shape == i.shape == (30, 8)
    assert torch.allclose(u.norm(dim=1), torch.ones(30), atol=1e-5)
    u2, _ = model(batch)
    assert torch.equal(u, u2)  # deterministic in eval mode
    model.train()
    torch.manual_seed(0)
    u3, _ = model(batch)
    assert not torch.allclose(u, u3)  # dropout of id embeddings changes training outputs


def test_loss_masks_duplicate_positives_and_learns() -> None:
    users = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    items = users.clone()
    idx = torch.tensor([1, 2, 1, 3])
    loss = in_batch_softmax_loss(users, items, idx, torch.zeros(4), 0.1)
    assert torch.isfinite(loss)
    # a row whose only other candidate is a duplicate of its positive has loss ~0 there
    catalog = tiny_catalog()
    item_enc, user_enc = ItemEncoder.fit(catalog, catalog), UserEncoder.fit(tiny_users(catalog), 4)
    model = _model(user_enc, item_enc, catalog)
    batch = _batch(user_enc, item_enc, catalog)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        u, i = model(batch)
        loss = in_batch_softmax_loss(u, i, batch["item_idx"], torch.zeros(30), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_run_round_trips_without_pickle(tmp_path: Path) -> None:
    catalog = tiny_catalog()
    items = ItemEncoder.fit(catalog, catalog)
    users = UserEncoder.fit(tiny_users(catalog), history=4)
    model = _model(users, items, catalog).eval()
    run = Run.create(tmp_path)
    save_two_tower(run, model, users, items)
    run.write_manifest({**manifest_entry(model), "metrics": {"x": 1}})
    run.set_current()
    assert Run.current(tmp_path) == run
    loaded, users2, items2 = load_two_tower(Run.current(tmp_path))
    assert Run.current(tmp_path).manifest["metrics"] == {"x": 1}
    assert users2.user_ids == users.user_ids and items2.price_edges == items.price_edges
    batch = {k: torch.as_tensor(v) for k, v in items.encode(catalog).items()}
    with torch.no_grad():
        assert torch.allclose(model.item_vectors(batch), loaded.item_vectors(batch))
    assert not any(p.suffix in {".pkl", ".pt"} for p in run.path.iterdir())
    with pytest.raises(FileNotFoundError, match="recsys train"):
        Run.current(tmp_path / "empty")
