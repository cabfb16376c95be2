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
    to_tensors,
)
from recsys.core.run import Run
from recsys.core.schema import ITEM_NUMERIC, USER_NUMERIC
from tests.conftest import tiny_catalog, tiny_users


@pytest.fixture
def shop() -> tuple[pd.DataFrame, pd.DataFrame, UserEncoder, ItemEncoder]:
    """The tiny catalogue, its 30 users, and encoders fitted on them."""
    catalog = tiny_catalog()
    frame = tiny_users(catalog)
    return catalog, frame, UserEncoder.fit(frame, history=4), ItemEncoder.fit(catalog, catalog)


def _model(shop: tuple) -> TwoTower:
    catalog, _, users, items = shop
    cfg = TwoTowerConfig(users.n_users, items.n_items, items.attr_sizes(), len(USER_NUMERIC),
                         len(ITEM_NUMERIC), dim=8, id_dropout=0.5)  # fmt: skip
    model = TwoTower(cfg)
    model.set_item_table(torch.as_tensor(items.attribute_table(catalog)))
    return model


def _batch(shop: tuple) -> dict:
    """30 (user, item) rows: each user of ``tiny_users`` paired with one catalogue item."""
    catalog, frame, users, items = shop
    return to_tensors(users.encode(frame, items) | items.encode(catalog.iloc[:30]))


def test_encoders_map_unknowns_to_zero_and_keep_shapes(shop: tuple) -> None:
    catalog, frame, users, items = shop
    enc = users.encode(frame, items)
    assert enc["history"].shape == (30, 4)
    assert (enc["history"][0] == 0).all() and (enc["history"][1, :3] > 0).all()
    assert np.isfinite(enc["user_numeric"]).all()
    unknown = users.encode(pd.DataFrame({"user_id": ["stranger"]}), items)
    assert unknown["user_idx"][0] == 0 and (unknown["user_numeric"] == 0).all()
    item_enc = items.encode(catalog.assign(colour=["mauve"] * len(catalog)))
    assert (item_enc["colour"] == 0).all() and (item_enc["item_idx"] > 0).all()


def test_online_row_encodes_like_the_training_batch(shop: tuple) -> None:
    """Serving encodes Feast's ``to_dict()`` columns; training encodes a DataFrame."""
    _, frame, users, items = shop
    batch = users.encode(frame, items)
    for row in (0, 1, 5):
        values = {c: [None if pd.isna(v) else v] if not isinstance(v, list) else [v]
                  for c, v in frame.iloc[row].items()}  # fmt: skip
        one = users.encode(values, items)
        for key, array in one.items():
            np.testing.assert_allclose(array[0], batch[key][row], rtol=1e-6)


def test_towers_are_normalised_and_id_dropout_only_trains(shop: tuple) -> None:
    model, batch = _model(shop), _batch(shop)
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


def test_loss_masks_duplicate_positives_and_learns(shop: tuple) -> None:
    users = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    items = users.clone()
    idx = torch.tensor([1, 2, 1, 3])
    loss = in_batch_softmax_loss(users, items, idx, torch.zeros(4), 0.1)
    assert torch.isfinite(loss)
    # a row whose only other candidate is a duplicate of its positive has loss ~0 there
    model, batch = _model(shop), _batch(shop)
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


def test_run_round_trips_without_pickle(shop: tuple, tmp_path: Path) -> None:
    catalog, _, users, items = shop
    model = _model(shop).eval()
    run = Run.create(tmp_path)
    save_two_tower(run, model, users, items)
    run.write_manifest({**manifest_entry(model), "metrics": {"x": 1}})
    run.set_current()
    assert Run.current(tmp_path) == run
    loaded, users2, items2 = load_two_tower(Run.current(tmp_path))
    assert Run.current(tmp_path).manifest["metrics"] == {"x": 1}
    assert users2.user_ids == users.user_ids and items2.price_edges == items.price_edges
    batch = to_tensors(items.encode(catalog))
    with torch.no_grad():
        assert torch.allclose(model.item_vectors(batch), loaded.item_vectors(batch))
    assert not any(p.suffix in {".pkl", ".pt"} for p in run.path.iterdir())
    with pytest.raises(FileNotFoundError, match="recsys train"):
        Run.current(tmp_path / "empty")
