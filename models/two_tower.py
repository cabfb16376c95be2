"""Two-tower retrieval model: user and item towers whose dot product ranks the catalogue.

The item tower sees the item id, its catalogue attributes and (when ``text_dim > 0``) a
frozen text embedding of its title, description and attributes, so an item with few or no
interactions still lands near items like it. The user tower sees the user id, numeric activity
features and the pooled embeddings of recent purchases (their ids, attributes and text), so a
returning user's vector follows what they bought last. Both outputs are L2-normalised: the item
vectors go into a cosine index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.encoding import ItemEncoder, UserEncoder, load_encoders, save_encoders
from recsys.core.arrays import unit_rows
from recsys.core.run import Run
from recsys.core.schema import ITEM_CATEGORICAL

#: File name of the weights, in a run folder and in the checkpoint a Ray Train worker reports.
WEIGHTS = "two_tower"
# Mean norm of the centred text rows the projection reads (see ``TwoTower.set_item_text``).
TEXT_NORM = 4.0
# Below this mean norm of the centred text rows, the texts are taken as all alike (unit rows
# that differ carry norms of 0.1 and more).
MIN_TEXT_SPREAD = 1e-3
ITEM_INPUTS = ("item_idx", *ITEM_CATEGORICAL, "price_bucket", "item_numeric")


@dataclass
class TwoTowerConfig:
    n_users: int
    n_items: int
    attr_sizes: dict[str, int]
    n_user_numeric: int
    n_item_numeric: int
    dim: int = 64
    temperature: float = 0.1
    # Share of training rows whose user/item id embedding is zeroed, so that the towers also
    # learn to place users and items from features alone (new users, new items).
    id_dropout: float = 0.0
    # Width of the frozen item text embeddings (0: none). Defaults to 0 so that runs saved
    # before text embeddings existed (no such key in their manifest) still load.
    text_dim: int = 0
    # Whether the user tower learns an embedding per user id. Off, the user is their history
    # and features alone (the table stays, all zeros and frozen, so shapes and saved runs do
    # not change). Defaults to True so that runs saved before the switch load as they were.
    user_ids: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.user_id = nn.Embedding(cfg.n_users, d)
        self.item_id = nn.Embedding(cfg.n_items, d)
        # History items get their own table: "bought X" and "is X" are different roles.
        self.history_item = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.attrs = nn.ModuleDict({name: nn.Embedding(n, d) for name, n in cfg.attr_sizes.items()})
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * d + cfg.n_user_numeric, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)
        )
        n_text = 1 if cfg.text_dim > 0 else 0
        width = d * (1 + len(cfg.attr_sizes) + n_text) + cfg.n_item_numeric
        self.item_mlp = nn.Sequential(nn.Linear(width, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        for emb in (self.user_id, self.item_id, self.history_item, *self.attrs.values()):
            nn.init.normal_(emb.weight, std=0.05)
        if not cfg.user_ids:
            nn.init.zeros_(self.user_id.weight)
            self.user_id.weight.requires_grad_(False)
        # Attribute indices of every catalogue item (row = item index), so that the history
        # is pooled from what the bought items *are*, not only from their ids: this carries
        # taste across items that few users bought. Filled by ``set_item_table``; saved with
        # the weights.
        self.register_buffer("item_table", torch.zeros(cfg.n_items, len(cfg.attr_sizes)).long())
        # Text embedding of every catalogue item (row = item index, row 0 and items without
        # text = zeros), frozen: a sentence encoder already places "ankle boots" near "boots",
        # which a new item's id cannot. A learned projection maps it into the towers' space;
        # the same projection pools the history, so the user tower sees what bought items
        # are described as. Buffers, not parameters: saved with the weights, never trained.
        self.text_proj: nn.Linear | None = None
        if cfg.text_dim > 0:
            self.text_proj = nn.Linear(cfg.text_dim, d)
            self.register_buffer("item_text", torch.zeros(cfg.n_items, cfg.text_dim))
            self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
            self.register_buffer("text_scale", torch.ones(1))

    def set_item_table(self, table: torch.Tensor) -> None:
        """``table[i, j]``: index of attribute ``j`` (``attr_sizes`` order) of item ``i``."""
        if table.shape != self.item_table.shape:
            raise ValueError(
                f"item table shape {tuple(table.shape)} != {tuple(self.item_table.shape)}"
            )
        self.item_table.copy_(table)

    def set_item_text(self, table: torch.Tensor) -> None:
        """``table[i]``: text embedding of item index ``i`` (row 0 = padding, zeros), kept as
        given (unit rows: serving ranks similar descriptions by their cosine); what the
        projection reads is each row minus the catalogue's mean text, scaled so the rows' mean
        norm is ``TEXT_NORM``. Sentence vectors of one catalogue share a large common part
        (MiniLM on the generated shop: the mean row has norm 0.66) that says nothing about an
        item and that the towers had to unlearn. On the test suite's shop (300 items, 3 seeds)
        recall@10 was 0.166 without text, 0.105 with the raw rows, 0.169 centred, 0.22-0.23
        centred with mean norms 2 to 4.5 (0.21 at 7.5)."""
        if self.text_proj is None:
            raise ValueError(
                "this model was built with text_dim=0: set TwoTowerConfig.text_dim to the "
                "embedding width to give it item text"
            )
        if table.shape != self.item_text.shape:
            raise ValueError(
                f"item text table shape {tuple(table.shape)} != {tuple(self.item_text.shape)} "
                "(rows: item vocabulary + padding row 0; columns: text_dim)"
            )
        table = table.to(torch.float32)
        self.item_text.copy_(table)
        rows = table[table.abs().sum(1) > 0]  # the items that have a text
        if len(rows):
            self.text_mean.copy_(rows.mean(0))
            norm = float((rows - self.text_mean).norm(dim=1).mean())
            # Rows that (nearly) all agree say nothing about any item; scaling their rounding
            # noise up to TEXT_NORM would feed the towers noise, so they project to the bias.
            self.text_scale.fill_(TEXT_NORM / norm if norm > MIN_TEXT_SPREAD else 0.0)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``text_proj`` of centred, rescaled text rows ``x`` (an item without text, a zero
        row, gets the bias alone). The centring and scaling are folded into the weights,
        ``W s (x - m) = (s W) x - (s W) m``, so that a step costs what projecting the raw rows
        costs: no transformed copy of the table is made or kept."""
        assert self.text_proj is not None
        weight = self.text_proj.weight * self.text_scale
        present = (x != 0).any(-1, keepdim=True)
        return F.linear(x, weight, self.text_proj.bias) - present * (weight @ self.text_mean)

    def _text(self, idx: torch.Tensor) -> torch.Tensor:
        """Projected text embeddings of item indices (any shape), ``(*idx.shape, dim)``, each
        distinct item projected once: a training batch's histories name ~10k items, mostly
        repeats of popular ones. Projecting every lookup took 4x (2k items) and 1.5x (30k,
        ASOS's size) the time, forward and backward, of projecting the distinct rows (or the
        whole table, when it is smaller than the lookups)."""
        flat = idx.reshape(-1)
        if flat.numel() >= len(self.item_text):
            return self._project(self.item_text)[idx]
        rows, inverse = torch.unique(flat, return_inverse=True)
        return self._project(self.item_text[rows])[inverse].reshape(*idx.shape, -1)

    def _id(self, table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
        out = table(idx)
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(len(idx), 1, device=out.device) >= self.cfg.id_dropout
            out = out * keep
        return out

    def _history_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """What items (indices of any shape) add to a history pool: history-id row, attribute
        embeddings and projected text, ``(*idx.shape, dim)``."""
        attrs = self.item_table[idx]  # (*idx.shape, n_attrs)
        content = sum(emb(attrs[..., j]) for j, emb in enumerate(self.attrs.values()))
        if self.text_proj is not None:
            content = content + self._text(idx)
        return self.history_item(idx) + content

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = batch["history"]
        mask = (hist > 0).unsqueeze(-1).float()
        # each distinct item's row computed once, then gathered: a batch's histories name
        # many repeats of the same popular items (as in :meth:`_text`)
        items, inverse = torch.unique(hist, return_inverse=True)
        rows = self._history_rows(items)[inverse]
        pooled = (rows * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        x = torch.cat([self._id(self.user_id, batch["user_idx"]), pooled, batch["user_numeric"]], 1)
        return F.normalize(self.user_mlp(x), dim=-1)

    def item_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self._id(self.item_id, batch["item_idx"])]
        parts += [emb(batch[name]) for name, emb in self.attrs.items()]
        if self.text_proj is not None:  # from the item index: no extra input to encode
            parts.append(self._text(batch["item_idx"]))
        parts.append(batch["item_numeric"])
        return F.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(batch), self.item_vectors(batch)

    @torch.no_grad()
    def history_table(self) -> torch.Tensor:
        """:meth:`_history_rows` of every item, ``(n_items, dim)``; row 0 is never pooled."""
        return self._history_rows(torch.arange(self.cfg.n_items, device=self.item_table.device))


@dataclass(frozen=True)
class NumpyUserTower:
    """The trained user tower as numpy arrays, for the API's one visitor per request: a torch
    forward of one row spends most of its ~0.4-0.9 ms in per-op dispatch (eight embedding
    lookups, the pooling, two linears); here the pooled item rows are looked up in a table
    computed once per loaded run (:meth:`TwoTower.history_table`), leaving two small matrix
    products. The output matches ``TwoTower.user_vectors`` to float32 rounding (a test checks)."""

    user_id: np.ndarray  # (n_users, dim)
    history: np.ndarray  # (n_items, dim)
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def from_model(cls, model: TwoTower) -> NumpyUserTower:
        first, second = model.user_mlp[0], model.user_mlp[2]

        def array(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().to(torch.float32).numpy())

        return cls(
            array(model.user_id.weight), array(model.history_table()),
            array(first.weight.T), array(first.bias), array(second.weight.T), array(second.bias),
        )  # fmt: skip

    def __call__(
        self, user_idx: np.ndarray, user_numeric: np.ndarray, history: np.ndarray
    ) -> np.ndarray:
        """Unit user vectors ``(batch, dim)`` from ``UserEncoder.encode``'s arrays."""
        mask = (history > 0)[..., None]
        pooled = (self.history[history] * mask).sum(1) / np.maximum(mask.sum(1), 1)
        x = np.concatenate([self.user_id[user_idx], pooled, user_numeric], axis=1)
        out = np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2
        return unit_rows(out).astype(np.float32)


def in_batch_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Sampled softmax over the other positives of the batch, with log-Q correction: in-batch
    negatives are drawn in proportion to popularity, which would teach the model to push popular
    items down; subtracting ``log q(item)`` from each logit undoes that bias. Duplicates of the
    positive item in the batch are masked so they do not count as negatives."""
    logits = users @ items.T / temperature - log_q.unsqueeze(0)
    same = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    eye = torch.eye(len(item_idx), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    labels = torch.arange(len(item_idx), device=logits.device)
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------- persistence
def save_two_tower(run: Run, model: TwoTower, users: UserEncoder, items: ItemEncoder) -> None:
    """Weights and encoders into ``run``; the config goes into the manifest
    (:func:`manifest_entry`), which ``recsys train`` writes last."""
    run.write_tensors(WEIGHTS, model.state_dict())
    save_encoders(run, users, items)


def manifest_entry(model: TwoTower) -> dict[str, dict]:
    return {"model_config": model.cfg.to_dict()}


def load_two_tower(run: Run) -> tuple[TwoTower, UserEncoder, ItemEncoder]:
    """The model (in eval mode) and its encoders, as ``recsys train`` saved them."""
    model = TwoTower(TwoTowerConfig(**run.manifest["model_config"]))
    model.load_state_dict(run.read_tensors(WEIGHTS, "torch"))
    model.eval()
    return model, *load_encoders(run)


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in arrays.items()}
