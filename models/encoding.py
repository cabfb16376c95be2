"""Turn feature rows into the integer and float tensors the two-tower model reads.

The encoders are fitted once on training data and saved beside the weights (as Parquet and
JSON, never pickle), so that serving encodes a request exactly as training did. Index 0 of every
vocabulary means "unknown/padding": an id the model never saw still gets a vector from its
other inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys.core.run import Run
from recsys.core.schema import ITEM_CATEGORICAL, ITEM_NUMERIC, USER_NUMERIC
from recsys.core.vocab import Vocabulary

# parts of a run folder (recsys.core.run.Run)
USER_VOCAB, ITEM_VOCAB, ENCODERS = "user_vocab", "item_vocab", "encoders"

PRICE_BUCKETS = 16
LOG_SCALED = {"views_total", "purchases_total", "sessions_total", "spend_total",
              "mean_price_paid", "max_price_paid", "purchases_30d", "views_7d"}  # fmt: skip
_LOG_COLUMNS = [j for j, c in enumerate(USER_NUMERIC) if c in LOG_SCALED]


def _vocab(values: Iterable[str]) -> dict[str, int]:
    return {v: i + 1 for i, v in enumerate(sorted({str(v) for v in values}))}


@dataclass
class ItemEncoder:
    """Item id and attribute vocabularies, price bucket edges and demand feature scaling."""

    item_ids: list[str]
    attr_vocabs: dict[str, dict[str, int]]
    price_edges: list[float]
    numeric_means: dict[str, float] = field(default_factory=dict)
    numeric_stds: dict[str, float] = field(default_factory=dict)
    vocab: Vocabulary = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # the run's one item vocabulary: the catalogue, sources and vector store index by it
        self.vocab = Vocabulary(self.item_ids)

    @classmethod
    def fit(cls, attributes: pd.DataFrame, examples: pd.DataFrame) -> ItemEncoder:
        """``attributes``: one row per catalogue item (the ``item_attributes`` feature view);
        ``examples``: training rows with the item demand features, for their scaling."""
        return cls.for_catalogue(attributes).with_demand_scale(item_demand(examples))

    @classmethod
    def for_catalogue(cls, attributes: pd.DataFrame) -> ItemEncoder:
        """Everything the catalogue decides (ids, attribute vocabularies, price buckets); the
        demand scaling is identity until :meth:`with_demand_scale` sets it from the training
        rows, so that training can encode its examples in chunks before it has seen them all."""
        vocabs = {c: _vocab(attributes[c].fillna("unknown")) for c in ITEM_CATEGORICAL}
        prices = np.log1p(attributes["price"].fillna(0).clip(lower=0).to_numpy())
        edges = np.unique(np.quantile(prices, np.linspace(0, 1, PRICE_BUCKETS + 1)[1:-1]))
        return cls(
            sorted(attributes["item_id"].astype(str)),
            vocabs,
            edges.tolist(),
            dict.fromkeys(ITEM_NUMERIC, 0.0),
            dict.fromkeys(ITEM_NUMERIC, 1.0),
        )

    def with_demand_scale(self, demand: np.ndarray) -> ItemEncoder:
        """This encoder with the demand features scaled by the mean and (sample) standard
        deviation of ``demand`` (:func:`item_demand` of every training row)."""
        n = len(demand)
        means = demand.mean(axis=0, dtype=np.float64) if n else np.zeros(len(ITEM_NUMERIC))
        stds = demand.std(axis=0, ddof=1, dtype=np.float64) if n > 1 else np.ones(len(ITEM_NUMERIC))
        return ItemEncoder(
            self.item_ids,
            self.attr_vocabs,
            self.price_edges,
            {c: float(m) for c, m in zip(ITEM_NUMERIC, means, strict=True)},
            {c: float(sd or 1.0) for c, sd in zip(ITEM_NUMERIC, stds, strict=True)},
        )

    @property
    def n_items(self) -> int:
        return self.vocab.size

    def index(self, item_id: str) -> int:
        return self.vocab.index(item_id)

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.vocab.indices(item_ids)

    def attr_sizes(self) -> dict[str, int]:
        sizes = {c: len(v) + 1 for c, v in self.attr_vocabs.items()}
        return sizes | {"price_bucket": len(self.price_edges) + 2}

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Tensor inputs of the item tower for rows with item_id + attribute columns."""
        return self.encode_catalogue(frame) | {
            "item_numeric": self.scale_demand(item_demand(frame))
        }

    def encode_catalogue(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The item tower's id, attribute and price inputs (all but the demand features)."""
        out = {"item_idx": self.indices(frame["item_id"].astype(str).tolist())}
        for c, vocab in self.attr_vocabs.items():
            col = frame[c].fillna("unknown").astype(str) if c in frame else ["unknown"] * len(frame)
            out[c] = np.fromiter((vocab.get(v, 0) for v in col), dtype=np.int64, count=len(frame))
        prices = np.log1p(frame["price"].fillna(0).clip(lower=0).to_numpy(dtype=float))
        out["price_bucket"] = np.searchsorted(self.price_edges, prices) + 1
        return out

    def scale_demand(self, demand: np.ndarray) -> np.ndarray:
        """:func:`item_demand` rows standardised with the training scaling, as float32."""
        means = np.array([self.numeric_means[c] for c in ITEM_NUMERIC])
        stds = np.array([self.numeric_stds[c] for c in ITEM_NUMERIC])
        return ((demand - means) / stds).astype(np.float32)

    def attribute_table(self, catalog: pd.DataFrame) -> np.ndarray:
        """Attribute indices per item index (row 0 = padding) for the model's history pooling,
        from ``catalog``: one row per ``item_ids`` entry, in that order."""
        encoded = self.encode(catalog)
        table = np.zeros((self.n_items, len(self.attr_sizes())), dtype=np.int64)
        table[1:] = np.stack([encoded[name] for name in self.attr_sizes()], axis=1)
        return table

    def to_dict(self) -> dict:
        return {"attr_vocabs": self.attr_vocabs, "price_edges": self.price_edges,
                "numeric_means": self.numeric_means, "numeric_stds": self.numeric_stds}  # fmt: skip


@dataclass
class UserEncoder:
    """User id vocabulary, history length and numeric feature scaling."""

    user_ids: list[str]
    history: int
    means: dict[str, float]
    stds: dict[str, float]
    vocab: Vocabulary = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.vocab = Vocabulary(self.user_ids)
        self._means = np.array([self.means[c] for c in USER_NUMERIC])
        self._stds = np.array([self.stds[c] for c in USER_NUMERIC])

    @classmethod
    def fit(cls, features: pd.DataFrame, history: int) -> UserEncoder:
        users = sorted(features["user_id"].astype(str).unique())
        return cls.fit_raw(users, user_numeric_raw(features, len(features)), history)

    @classmethod
    def fit_raw(cls, user_ids: list[str], raw: np.ndarray, history: int) -> UserEncoder:
        """The encoder of ``user_ids`` (sorted) with the numeric scaling of ``raw``
        (:func:`user_numeric_raw` of every training row; NaN = missing)."""
        columns = range(len(USER_NUMERIC))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> defaults
            # column by column: numpy's temporaries for all columns at once would be float64
            # copies of the whole table (3.3 GB at 22M training rows)
            mean = np.nan_to_num([np.nanmean(raw[:, j], dtype=np.float64) for j in columns])
            std = np.nan_to_num([np.nanstd(raw[:, j], dtype=np.float64) for j in columns], nan=1.0)
        means = {c: float(m) for c, m in zip(USER_NUMERIC, mean, strict=True)}
        stds = {c: float(sd or 1.0) for c, sd in zip(USER_NUMERIC, std, strict=True)}
        return cls(user_ids, history, means, stds)

    @property
    def n_users(self) -> int:
        return self.vocab.size

    def encode(
        self, features: pd.DataFrame | Mapping[str, Sequence[Any]], items: ItemEncoder
    ) -> dict[str, np.ndarray]:
        """User tower inputs from columns (a DataFrame, or Feast's online ``to_dict()``), on
        plain arrays rather than pandas so that one online row encodes in microseconds; a
        missing feature (a user's first day) encodes as the training mean."""
        ids = [str(u) for u in features["user_id"]]
        column = features["purchased_items"] if "purchased_items" in features else [None] * len(ids)
        return {
            "user_idx": self.vocab.indices(ids),
            "user_numeric": self.scale(user_numeric_raw(features, len(ids))),
            "history": history_indices(column, items, self.history),
        }

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """:func:`user_numeric_raw` rows standardised, a missing value as the training mean."""
        filled = np.where(np.isnan(raw), self._means, raw)
        return np.nan_to_num(((filled - self._means) / self._stds).astype(np.float32))

    def to_dict(self) -> dict:
        return {"history": self.history, "means": self.means, "stds": self.stds}


def history_indices(
    purchased: Sequence[Sequence[str] | None], items: ItemEncoder, history: int
) -> np.ndarray:
    """The newest ``history`` purchased items of each row as item indices, zero-padded."""
    hist = np.zeros((len(purchased), history), dtype=np.int64)
    for row, bought in enumerate(purchased):
        if bought is not None and len(bought) > 0:
            idx = items.indices(list(bought[:history]))
            hist[row, : len(idx)] = idx
    return hist


def user_numeric_raw(features: pd.DataFrame | Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
    """Numeric user features ``(n, len(USER_NUMERIC))`` as floats (NaN = missing), counts on a
    log scale. One array op per step, not per column: the API encodes one row per request."""
    columns = []
    for c in USER_NUMERIC:
        col = features[c] if c in features else [None] * n
        if isinstance(col, pd.Series):
            col = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        else:
            col = [np.nan if v is None else v for v in col]
        columns.append(col)
    raw = np.array(columns, dtype=float).T.reshape(n, len(USER_NUMERIC))
    raw[:, _LOG_COLUMNS] = np.log1p(np.clip(raw[:, _LOG_COLUMNS], 0, None))
    return raw


def item_demand(frame: pd.DataFrame) -> np.ndarray:
    """The item demand features ``(n, len(ITEM_NUMERIC))`` as log1p counts (float64); a
    missing value (never sold yet) counts as zero."""
    columns = []
    for c in ITEM_NUMERIC:
        col = pd.to_numeric(frame[c], errors="coerce") if c in frame else 0.0
        series = pd.Series(col, index=frame.index, dtype=float).fillna(0).clip(lower=0)
        columns.append(np.log1p(series.to_numpy()))
    return np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0))


def save_encoders(run: Run, users: UserEncoder, items: ItemEncoder) -> None:
    """Vocabularies as Parquet (row order = index - 1), scalers and attribute vocabs as JSON."""
    run.write_table(USER_VOCAB, pd.DataFrame({"user_id": users.user_ids}))
    run.write_table(ITEM_VOCAB, pd.DataFrame({"item_id": items.item_ids}))
    run.write_json(ENCODERS, {"user": users.to_dict(), "item": items.to_dict()})


def load_item_ids(run: Run) -> list[str]:
    """The run's item vocabulary in index order (``ids[i]`` has index ``i + 1``)."""
    return run.read_table(ITEM_VOCAB)["item_id"].tolist()


def load_encoders(run: Run) -> tuple[UserEncoder, ItemEncoder]:
    """The encoders :func:`save_encoders` wrote (``to_dict`` holds their other fields)."""
    meta = run.read_json(ENCODERS)
    users = UserEncoder(run.read_table(USER_VOCAB)["user_id"].tolist(), **meta["user"])
    return users, ItemEncoder(load_item_ids(run), **meta["item"])
