"""Two-tower retrieval model: user and item towers whose dot product ranks the catalogue.

The item tower sees the item id and its catalogue attributes, so an item with few or no
interactions still lands near items like it. The user tower sees the user id, numeric activity
features and the pooled embeddings of recent purchases, so a returning user's vector follows
what they bought last. Both outputs are L2-normalised: the item vectors go into a cosine index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ITEM_INPUTS = ("item_idx", "category", "colour", "department", "style", "product_type",
               "price_bucket", "item_numeric")  # fmt: skip
USER_INPUTS = ("user_idx", "user_numeric", "history")


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
        self.item_mlp = nn.Sequential(
            nn.Linear(d * (1 + len(cfg.attr_sizes)) + cfg.n_item_numeric, 2 * d),
            nn.ReLU(),
            nn.Linear(2 * d, d),
        )
        for emb in (self.user_id, self.item_id, self.history_item, *self.attrs.values()):
            nn.init.normal_(emb.weight, std=0.05)
        # Attribute indices of every catalogue item (row = item index), so that the history
        # is pooled from what the bought items *are*, not only from their ids: this carries
        # taste across items that few users bought. Filled by ``set_item_table``; saved with
        # the weights.
        self.register_buffer(
            "item_table", torch.zeros(cfg.n_items, len(cfg.attr_sizes), dtype=torch.long)
        )

    def set_item_table(self, table: torch.Tensor) -> None:
        """``table[i, j]``: index of attribute ``j`` (``attr_sizes`` order) of item ``i``."""
        if table.shape != self.item_table.shape:
            raise ValueError(
                f"item table shape {tuple(table.shape)} != {tuple(self.item_table.shape)}"
            )
        self.item_table.copy_(table)

    def _id(self, table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
        out = table(idx)
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(len(idx), 1, device=out.device) >= self.cfg.id_dropout
            out = out * keep
        return out

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = batch["history"]
        mask = (hist > 0).unsqueeze(-1).float()
        attrs = self.item_table[hist]  # (batch, history, n_attrs)
        content = sum(emb(attrs[..., j]) for j, emb in enumerate(self.attrs.values()))
        pooled = ((self.history_item(hist) + content) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        x = torch.cat([self._id(self.user_id, batch["user_idx"]), pooled, batch["user_numeric"]], 1)
        return F.normalize(self.user_mlp(x), dim=-1)

    def item_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self._id(self.item_id, batch["item_idx"])]
        parts += [emb(batch[name]) for name, emb in self.attrs.items()]
        parts.append(batch["item_numeric"])
        return F.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(batch), self.item_vectors(batch)


def in_batch_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Sampled softmax over the other positives of the batch, with log-Q correction.

    In-batch negatives are drawn in proportion to popularity, which would teach the model to
    push popular items down; subtracting ``log q(item)`` from each logit undoes that bias.
    Duplicates of the positive item in the batch are masked so they do not count as negatives.
    """
    logits = users @ items.T / temperature - log_q.unsqueeze(0)
    same = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    eye = torch.eye(len(item_idx), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    labels = torch.arange(len(item_idx), device=logits.device)
    return F.cross_entropy(logits, labels)
