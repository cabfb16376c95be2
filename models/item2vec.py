"""item2vec: skip-gram with negative sampling over ordered shopping sessions.

Items viewed, carted or bought close together in one session are substitutes or outfit
companions; skip-gram turns that co-occurrence into item vectors whose cosine neighbours serve
"similar items" and next-item suggestions, and which also exist for items no user tower has a
feature row for yet. The pieces here are pure (no Ray, no DuckDB) so that the training pipeline,
the tests and the serving process share one definition; a saved run is safetensors, Parquet and
JSON, nothing pickled, so that a serving process can trust what it loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from recsys.core.arrays import top_k
from recsys.core.run import Run
from recsys.core.schema import EVENT_TYPES, REQUIRED_COLUMNS
from recsys.core.vocab import Vocabulary

WEIGHTS, VOCAB, MANIFEST = "item2vec", "item2vec_vocab", "item2vec_manifest"  # run parts
PAD = 0  # index 0 of every table: padding, and where unknown items map


class Item2VecConfig(BaseModel):
    """Hyper-parameters of one item2vec fit (kept out of ``recsys.core.settings.Settings``)."""

    dim: int = Field(default=64, ge=1)
    window: int = Field(default=3, ge=1, description="Context items on each side of a center.")
    negatives: int = Field(default=5, ge=1, description="Negatives per positive pair.")
    subsample: float = Field(
        default=1e-3,
        ge=0.0,
        description="Mikolov sub-sampling threshold t: an item with frequency f is kept with "
        "probability sqrt(t/f) + t/f (clipped to 1); 0 keeps every occurrence.",
    )
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=4096, ge=1)
    lr: float = Field(default=0.01, gt=0.0, description="SparseAdam learning rate.")
    min_count: int = Field(
        default=1, ge=1, description="Items seen fewer times in training sessions are dropped."
    )
    seed: int = 0


# --------------------------------------------------------------------------- vocabulary
class SessionVocabulary(Vocabulary):
    """The items of the training sessions, most frequent first (ties by id), so that the
    order is deterministic and a truncated table keeps the items that matter; ``counts[i]``
    is how often index ``i`` occurred (``counts[0]``, the padding, is 0)."""

    def __init__(self, item_ids: np.ndarray | list[str], counts: np.ndarray) -> None:
        super().__init__(str(i) for i in item_ids)
        if len(counts) != len(self.ids) + 1:
            raise ValueError(
                f"vocabulary has {len(self.ids)} ids but {len(counts)} counts; "
                "counts must have one more entry (index 0 = padding)."
            )
        self.counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def fit(cls, tokens: np.ndarray, min_count: int = 1) -> SessionVocabulary:
        """Vocabulary of the item ids in ``tokens`` seen at least ``min_count`` times."""
        ids, counts = np.unique(np.asarray(tokens, dtype=object), return_counts=True)
        keep = counts >= min_count
        ids, counts = ids[keep], counts[keep]
        order = np.lexsort((ids, -counts))
        return cls(ids[order], np.concatenate([[0], counts[order]]).astype(np.int64))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"index": np.arange(1, self.size, dtype=np.int64),
                             "item_id": self.ids, "count": self.counts[1:]})  # fmt: skip

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> SessionVocabulary:
        frame = frame.sort_values("index")
        if not np.array_equal(frame["index"].to_numpy(), np.arange(1, len(frame) + 1)):
            raise ValueError("vocabulary file is corrupt: indices must be 1..V without gaps")
        counts = np.concatenate([[0], frame["count"].to_numpy(np.int64)])
        return cls(frame["item_id"].to_numpy(object), counts)


# --------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class Sessions:
    """Sessions in CSR form, session s = ``items[offsets[s]:offsets[s + 1]]``: a million
    sessions in two arrays, and every step downstream (pairs, transitions) is a vectorised
    comparison of neighbouring positions."""

    items: np.ndarray  # int64 vocabulary indices (0 = unknown where kept)
    offsets: np.ndarray  # int64, length n_sessions + 1
    start: np.ndarray  # datetime64[ns] (UTC) of each session's first event

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def session_index(self) -> np.ndarray:
        """Session number of every position in ``items``."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))


def session_keys(interactions: pd.DataFrame) -> np.ndarray:
    """An integer session key per row: ``session_id``, or user + UTC calendar day without one
    (null or empty: adapters for logs without sessions leave it so; a shopper's day is the usual
    stand-in)."""
    ts = _utc_ns(interactions["timestamp"])
    sid = interactions.get("session_id", pd.Series(None, interactions.index, dtype=object))
    has = (sid.notna() & (sid.astype(object) != "")).to_numpy()
    key = np.empty(len(interactions), dtype=np.int64)
    codes, uniques = pd.factorize(sid[has])
    key[has] = codes
    day = ts[~has].astype("datetime64[D]")
    fallback = pd.DataFrame({"u": interactions["user_id"].to_numpy()[~has], "d": day})
    key[~has] = len(uniques) + fallback.groupby(["u", "d"], sort=False).ngroup().to_numpy()
    return key


def _utc_ns(timestamps: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(timestamps, utc=True)
    if ts.isna().any():
        raise ValueError(
            f"interactions have {int(ts.isna().sum())} null timestamps: sessions cannot be "
            "ordered; validate the data first (`recsys validate`)."
        )
    return ts.dt.tz_convert(None).to_numpy().astype("datetime64[ns]")


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Mask of the positions where any of ``columns`` differs from the position before (and of
    the first): the first of each run of one item within one session, or of each session."""
    starts = np.ones(len(columns[0]), dtype=bool)
    starts[1:] = np.logical_or.reduce([col[1:] != col[:-1] for col in columns])
    return starts


def build_sessions(
    interactions: pd.DataFrame,
    vocab: SessionVocabulary | None = None,
    *,
    min_count: int = 1,
    drop_unknown: bool = True,
) -> tuple[Sessions, SessionVocabulary]:
    """Ordered sessions of views, carts and purchases, and the vocabulary they are coded in:
    events grouped by session (see :func:`session_keys`), sessions ordered by their first event
    and events by timestamp (ties keep input order), a run of one item collapsed to one step
    (view -> cart -> purchase of an item is one step of the journey, not three).

    Without ``vocab`` one is fitted on these sessions (``min_count``). Items outside the
    vocabulary become 0; ``drop_unknown`` removes them (training: they carry no signal, and the
    neighbours on either side become adjacent), otherwise they stay in place (evaluation: a
    step to an unseen item is a step no model could predict, and must count as a miss).
    """
    missing = set(REQUIRED_COLUMNS["interactions"]) - set(interactions.columns)
    if missing:
        raise ValueError(
            f"interactions lack column(s) {sorted(missing)}: sessions need user_id, item_id, "
            "timestamp and event_type (see recsys/core/schema.py)."
        )
    events = interactions[interactions["event_type"].isin(EVENT_TYPES)]
    key = session_keys(events)
    ts = _utc_ns(events["timestamp"]).astype(np.int64)
    item_codes, item_uniques = pd.factorize(events["item_id"])
    start_of_key = pd.Series(ts).groupby(key).transform("min").to_numpy()
    order = np.lexsort((np.arange(len(events)), ts, key, start_of_key))
    key, item_codes, start_of_key = key[order], item_codes[order], start_of_key[order]
    keep = _run_starts(item_codes, key)
    key, start_of_key = key[keep], start_of_key[keep]
    tokens = np.asarray(item_uniques, dtype=object)[item_codes[keep]]
    if vocab is None:
        vocab = SessionVocabulary.fit(tokens, min_count)
    codes = vocab.encode(tokens)
    if drop_unknown:
        known = codes != PAD
        codes, key, start_of_key = codes[known], key[known], start_of_key[known]
        keep = _run_starts(codes, key)
        codes, key, start_of_key = codes[keep], key[keep], start_of_key[keep]
    bounds = np.flatnonzero(_run_starts(key))
    offsets = np.append(bounds, len(key)).astype(np.int64)
    sessions = Sessions(codes, offsets, start_of_key[bounds].astype("datetime64[ns]"))
    return sessions, vocab


# --------------------------------------------------------------------------- pairs
def subsample_keep_prob(counts: np.ndarray, threshold: float) -> np.ndarray:
    """Probability of keeping each occurrence of an item (Mikolov sub-sampling): frequent items
    (best-sellers, the homepage hero) co-occur with everything and would dominate the pairs;
    keeping an item of frequency f with probability sqrt(t/f) + t/f (the word2vec C tool's form
    of "discard with 1 - sqrt(t/f)") flattens them while rare items are always kept. Index 0
    (padding/unknown) is never kept."""
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.zeros(len(counts))
    total = counts.sum()
    seen = counts > 0
    if threshold <= 0 or total == 0:
        keep[seen] = 1.0
    else:
        ratio = threshold / (counts[seen] / total)
        keep[seen] = np.sqrt(ratio) + ratio
    keep[PAD] = 0.0
    return np.clip(keep, 0.0, 1.0)


def skipgram_pairs(
    sessions: Sessions, window: int, rng: np.random.Generator, keep_prob: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) index pairs, both directions, for every distance 1..``window``, never
    across a session boundary nor of an item with itself or with padding, in generation order
    (by distance: shuffle before sharding). Sub-sampling (``keep_prob`` per item index) drops
    occurrences before windowing, as in word2vec: a dropped best-seller lets its neighbours see
    further."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    items, sess = sessions.items, sessions.session_index()
    if keep_prob is not None:
        mask = rng.random(len(items)) < keep_prob[items]
        items, sess = items[mask], sess[mask]
    centers, contexts = [], []
    for d in range(1, window + 1):
        same = sess[d:] == sess[:-d]
        left, right = items[:-d][same], items[d:][same]
        centers += [left, right]
        contexts += [right, left]
    center, context = np.concatenate(centers), np.concatenate(contexts)
    ok = (center != context) & (center != PAD) & (context != PAD)
    return center[ok].astype(np.int64), context[ok].astype(np.int64)


def negative_cdf(counts: np.ndarray, power: float = 0.75) -> torch.Tensor:
    """Cumulative unigram^0.75 distribution over indices (padding has weight 0), for negatives
    drawn as ``searchsorted(cdf, uniform)``: O(log V) per draw, no alias table."""
    weights = np.asarray(counts, dtype=np.float64) ** power
    weights[PAD] = 0.0
    if weights.sum() <= 0:
        raise ValueError("no item has a count: cannot draw negatives from an empty vocabulary")
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return torch.as_tensor(cdf, dtype=torch.float64)


def draw_negatives(cdf: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=True).clamp_(1, len(cdf) - 1)


# --------------------------------------------------------------------------- model
class Item2Vec(nn.Module):
    """Skip-gram with negative sampling: an input (center) and an output (context) table, both
    with sparse gradients, so that each step touches only the rows in the batch (SparseAdam):
    what makes a 30k-item catalogue cheap to train on CPU."""

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.input = nn.Embedding(n_items, dim, sparse=True, padding_idx=PAD)
        self.output = nn.Embedding(n_items, dim, sparse=True, padding_idx=PAD)
        # word2vec's initialisation: small random inputs, zero outputs.
        nn.init.uniform_(self.input.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.input.weight[PAD])

    def forward(
        self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the batch of -log σ(u·v) - Σ log σ(-u·v_neg)."""
        u = self.input(center)  # (B, D)
        v = self.output(context)  # (B, D)
        neg = self.output(negatives)  # (B, K, D)
        pos = F.logsigmoid((u * v).sum(-1))
        negs = F.logsigmoid(-torch.bmm(neg, u.unsqueeze(-1)).squeeze(-1)).sum(-1)
        return -(pos + negs).mean()

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """L2-normalised input embeddings (row = item index; row 0 stays zero)."""
        return F.normalize(self.input.weight.detach(), dim=-1)


def cosine_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, max_cells: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours (indices, scores) of each query index, itself and padding
    excluded; fewer columns when the vocabulary is smaller than ``k + 1``. ``vectors`` must be
    L2-normalised. Queries go in chunks of at most ``max_cells`` scores (64 MB), so a large
    catalogue never needs a full V x V matrix."""
    chunk = max(1, max_cells // max(len(vectors), 1))
    k = max(0, min(k, len(vectors) - 2))
    out_idx = np.empty((len(queries), k), dtype=np.int64)
    out_score = np.empty((len(queries), k), dtype=np.float32)
    for lo in range(0, len(queries), chunk):
        q = queries[lo : lo + chunk]
        scores = vectors[q] @ vectors.T
        scores[:, PAD] = -np.inf
        scores[np.arange(len(q)), q] = -np.inf
        top = top_k(scores, k)
        out_idx[lo : lo + len(q)] = top
        out_score[lo : lo + len(q)] = np.take_along_axis(scores, top, axis=1)
    return out_idx, out_score


# --------------------------------------------------------------------------- artifacts
@dataclass
class Item2VecRun:
    """A loaded item2vec run: the model, its vocabulary and manifest, ready to answer
    "similar items" without touching the training stack."""

    model: Item2Vec
    vocab: SessionVocabulary
    config: Item2VecConfig
    manifest: dict[str, Any]
    vectors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.vectors = self.model.item_vectors().numpy()

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items nearest to ``item_id`` by cosine, best first, itself excluded;
        ``KeyError`` for an item the model never saw (launched after training, or below
        ``min_count``): the caller should fall back, e.g. to popular items."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        idx = self.vocab.index(item_id)
        if idx == PAD:
            raise KeyError(
                f"item {item_id!r} is not in the item2vec vocabulary ({self.vocab.size - 1} "
                "items seen in training sessions): fall back to popular items or retrain."
            )
        top, scores = cosine_topk(self.vectors, np.array([idx]), k)
        return [(self.vocab.id(i), float(s)) for i, s in zip(top[0], scores[0], strict=True)]


def save_item2vec(
    run: Run,
    model: Item2Vec,
    vocab: SessionVocabulary,
    cfg: Item2VecConfig,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Weights (safetensors), vocabulary (Parquet) and manifest (JSON) into ``run``, in parts
    named after the model, so that they can sit next to a two-tower run's files."""
    rows = model.input.num_embeddings
    if rows != vocab.size:
        raise ValueError(
            f"model has {rows} rows but the vocabulary {vocab.size}: save the "
            "vocabulary the model was trained on."
        )
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_tensors(WEIGHTS, model.state_dict())
    run.write_table(VOCAB, vocab.to_frame())
    run.write_json(MANIFEST, {
        "model": "item2vec",
        "created_at": datetime.now(UTC).isoformat(),
        "config": cfg.model_dump(),
        "n_items": vocab.size,
        "weights": run.part(WEIGHTS, "tensors").name,
        "vocab": run.part(VOCAB, "table").name,
        "metrics": metrics or {},
        **(extra or {}),
    })  # fmt: skip
    return run


def load_item2vec(run: Run) -> Item2VecRun:
    """Load a run written by :func:`save_item2vec` (no pickle anywhere)."""
    manifest_file = run.part(MANIFEST, "json")
    if not manifest_file.exists():
        raise FileNotFoundError(f"{manifest_file} is missing: train item2vec into it first.")
    manifest = run.read_json(MANIFEST)
    cfg = Item2VecConfig(**manifest["config"])
    vocab = SessionVocabulary.from_frame(run.read_table(VOCAB))
    model = Item2Vec(vocab.size, cfg.dim)
    model.load_state_dict(run.read_tensors(WEIGHTS, "torch"))
    return Item2VecRun(model, vocab, cfg, manifest)
