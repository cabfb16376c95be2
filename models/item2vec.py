"""item2vec: skip-gram with negative sampling over ordered shopping sessions.

Items viewed, carted or bought close together in one session are substitutes or outfit
companions; skip-gram turns that co-occurrence into item vectors whose cosine neighbours serve
"similar items" and next-item suggestions, and which also exist for items no user tower has a
feature row for yet. The pieces here (pairs, the network, the per-worker fit on the project's
epoch loop, the saved run) take no data store and import no Ray at module level, so that the
``recsys item2vec`` pipeline, the session model (:mod:`models.session.item2vec`), the benchmarks,
the tests, the serving process and each Ray Train worker (which imports this module to run
:func:`train_func`) share one definition; a saved run is safetensors, Parquet and JSON, nothing
pickled, so that a serving process can trust what it loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from models.session.data import PAD, Sessions, SessionVocabulary
from recsys.core.arrays import top_k
from recsys.core.epoch_loop import final_metrics, ray_worker, run_plain, train_epochs
from recsys.core.run import Run

WEIGHTS, VOCAB, MANIFEST = "item2vec", "item2vec_vocab", "item2vec_manifest"  # run parts


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


# --------------------------------------------------------------------------- training
def write_pairs(
    sessions: Sessions, counts: np.ndarray, cfg: Item2VecConfig, arrays: Path, threads: int
) -> tuple[int, dict[str, Any]]:
    """Write the sub-sampled skip-gram pairs of the training ``sessions``, shuffled (iid shards
    for ``rank::world`` slicing), and ``counts`` (occurrences per index, ``counts[0]`` = 0; one
    entry per row of the model) to ``arrays``; return their number and the workers' config."""
    rng = np.random.default_rng(cfg.seed)
    keep = subsample_keep_prob(counts, cfg.subsample)
    center, context = skipgram_pairs(sessions, cfg.window, rng, keep)
    shuffle = rng.permutation(len(center))
    center, context = center[shuffle].astype(np.int32), context[shuffle].astype(np.int32)
    np.savez(arrays, center=center, context=context, counts=counts)
    config = {"arrays": str(arrays), "n_items": len(counts), "threads": threads}
    return len(center), config | {"model": cfg.model_dump()}


def fit_shard(
    config: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    report: Callable[[dict[str, Any]], None] | None = None,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Fit item2vec on this rank's shard (``rank::world``) of the pairs of ``config["arrays"]``
    (:func:`write_pairs`), shuffling and drawing negatives each epoch: a fit as
    :mod:`recsys.core.epoch_loop` runs them, under Ray Train or in plain PyTorch."""
    cfg = Item2VecConfig(**config["model"])
    torch.set_num_threads(max(1, int(config["threads"])))
    torch.manual_seed(cfg.seed)
    with np.load(config["arrays"], allow_pickle=False) as data:
        center = torch.as_tensor(data["center"][rank::world].astype(np.int64))
        context = torch.as_tensor(data["context"][rank::world].astype(np.int64))
        cdf = negative_cdf(data["counts"])
    n = len(center)
    if n == 0:
        raise ValueError("no skip-gram pairs to train on: sessions need at least two items.")
    base = Item2Vec(int(config["n_items"]), cfg.dim)
    model = prepare(base) if prepare is not None else base
    optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    model.train()

    def losses() -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            negatives = draw_negatives(cdf, (len(idx), cfg.negatives), gen)
            yield model(center[idx], context[idx], negatives)

    history = train_epochs(cfg.epochs, losses, [optimizer], ("pairs", n), report, "item2vec",
                           cfg.batch_size)  # fmt: skip
    state = {k: v.detach().clone() for k, v in base.state_dict().items()} if rank == 0 else None
    return state, final_metrics(history)


def train_func(config: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`fit_shard` under 1 or N workers (DDP, which all-reduces the
    sparse embedding gradients); rank 0 reports the weights with the last epoch."""
    ray_worker(fit_shard, config, WEIGHTS)


def train_plain(config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The same fit as :func:`train_func` without Ray: the baseline against which Ray Train's
    overhead is measured. Also the sane choice for a small catalogue on one machine."""
    return run_plain(fit_shard, config)


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
