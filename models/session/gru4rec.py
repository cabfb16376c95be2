"""GRU4Rec: a recurrent next-item model over the visit so far (Hidasi et al., 2016).

Counting models see only the last item (or a bag of recent ones); a GRU reads the whole prefix
in order, so "dress, then belt" and "belt, then dress" can lead to different next items. The
recurrent state is scored against every item of the catalogue by a dot product with the item
embeddings, tied to the input ones through a projection. Measured on the synthetic shop
(2,000 items, held-out week, HR@20 / MRR@20): at the default sizes a separate output table
(hidden wide) won by ~1 point of HR on the current generator (3 seeds: 0.830 vs 0.821) and lost
by ~1.5 on the previous one (2 seeds: 0.837 vs 0.849); the tied table as wide as the separate
one (dim=128) matched or beat it (0.833, MRR 0.338 vs 0.336). So it is tied: as good at equal
width, no second n_items-row table to fit and save, and ``dim`` (in the grid) sets the capacity.

Training examples are every prefix of every training session (``items[:i] -> items[i]``), each
the last ``max_len`` items, left-padded with 0, in an ``.npz`` that plain PyTorch
(:func:`recsys.core.epoch_loop.run_plain`) or Ray Train workers
(:func:`recsys.core.ray_runtime.fit_torch`) fit on through the project's one epoch loop. Weights
are saved as safetensors and the parameters as JSON: nothing pickled.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from models.item2vec import draw_negatives, negative_cdf
from models.session.base import SessionModel, parse_params, register_model
from models.session.data import PAD, Sessions
from recsys.core.epoch_loop import final_metrics, ray_worker, run_plain, train_epochs
from recsys.core.run import Run
from recsys.core.settings import Settings

WEIGHTS = "gru4rec"  # the part of a Ray checkpoint holding the weights
EXAMPLES = "gru4rec_examples.npz"
SCORE_CELLS = 1 << 22  # scores computed at once when scoring: 16 MB of float32


class GRU4RecParams(BaseModel):
    """The hyper-parameters of one fit (JSON values, saved with the weights)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=256, ge=1)
    lr: float = Field(default=3e-3, gt=0.0, description="Adam learning rate.")
    dim: int = Field(default=64, ge=1, description="Item embedding size.")
    hidden: int = Field(default=128, ge=1, description="GRU units.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="On the GRU's last state.")
    max_len: int = Field(default=20, ge=1, description="Last items of a prefix the GRU reads.")
    full_softmax_items: int = Field(
        default=50_000,
        ge=2,
        description="Up to this catalogue size the loss is a softmax over every item; above, "
        "over the batch's targets plus sampled popular negatives (logQ-corrected).",
    )
    negatives: int = Field(
        default=1024, ge=0, description="Popular negatives per batch (sampled loss; 0: in-batch)."
    )
    seed: int = 0


# --------------------------------------------------------------------------- examples
def prefix_examples(sessions: Sessions, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(prefixes, targets): for every position i >= 1 of every session, the last ``max_len``
    items before it, left-padded with 0, as an int32 (n, max_len) matrix, and item i. Zeros
    (unknown items) are dropped first: they carry no signal, the neighbours join."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    sess = sessions.session_index()
    keep = sessions.items != PAD
    items, sess = sessions.items[keep], sess[keep]
    first = np.ones(len(items), dtype=bool)
    first[1:] = sess[1:] != sess[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(items)), 0))
    positions = np.flatnonzero(~first)
    prefixes = np.zeros((len(positions), max_len), dtype=np.int32)
    offsets = np.arange(-max_len, 0)
    for lo in range(0, len(positions), 1 << 20):  # bounded temporaries on large logs
        p = positions[lo : lo + (1 << 20)]
        cols = p[:, None] + offsets
        valid = cols >= start[p][:, None]
        prefixes[lo : lo + len(p)] = np.where(valid, items[np.maximum(cols, 0)], PAD)
    return prefixes, items[positions].astype(np.int32)


def pad_prefixes(prefixes: Sequence[np.ndarray], max_len: int, n_items: int) -> np.ndarray:
    """The last ``max_len`` known items (1..n_items-1) of each prefix, left-padded with 0."""
    out = np.zeros((len(prefixes), max_len), dtype=np.int64)
    for r, prefix in enumerate(prefixes):
        p = np.asarray(prefix, dtype=np.int64).ravel()
        p = p[(p > PAD) & (p < n_items)][-max_len:]
        if len(p):
            out[r, max_len - len(p) :] = p
    return out


# --------------------------------------------------------------------------- network
class GRU4RecNet(nn.Module):
    """Item embedding -> GRU -> dropout -> a score for every item by a dot product with the
    (tied) item embeddings, plus a per-item bias (the popularity prior). ``known``: items that
    were a training target; the others can never be learned as a next item and score 0."""

    def __init__(self, n_items: int, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items, dim, padding_idx=PAD)
        nn.init.normal_(self.items.weight, std=dim**-0.5)
        with torch.no_grad():
            self.items.weight[PAD].zero_()
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden, dim)
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.register_buffer("known", torch.zeros(n_items, dtype=torch.bool))

    def encode(self, prefixes: torch.Tensor) -> torch.Tensor:
        """The state after the last item of each left-padded prefix (none may be empty), in
        the output space. Exact whatever the padding: leading pad columns are cut and each
        row is right-aligned, so the GRU never reads a pad before an item and a prefix scores
        the same in any batch (batches of similar lengths then run only the steps they need)."""
        lengths = (prefixes != PAD).sum(1)
        width = int(lengths.max())
        x = prefixes[:, prefixes.shape[1] - width :]
        shift = (width - lengths)[:, None]
        idx = (torch.arange(width)[None, :] + shift).clamp_(max=width - 1)
        out, _ = self.gru(self.items(torch.gather(x, 1, idx)))  # garbage after each row's end
        state = self.dropout(out[torch.arange(len(x)), lengths - 1])
        return self.project(state)

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """Scores of every item (unknown ones -inf): the logits of the full softmax."""
        scores = state @ self.items.weight.T + self.bias
        return scores.masked_fill(~self.known, float("-inf"))

    def forward(
        self,
        prefixes: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the targets: over the whole catalogue without ``negatives``;
        else over the batch's targets plus ``negatives``, each candidate's logit lowered by
        ``log_q`` (the log-probability that it is a candidate, Yi et al. 2019) so that the
        sampled softmax estimates the full one instead of punishing popular items."""
        state = self.encode(prefixes)
        if negatives is None:
            return F.cross_entropy(self.logits(state), targets)
        assert log_q is not None
        candidates = torch.cat([targets, negatives])
        scores = state @ self.items.weight[candidates].T + (self.bias - log_q)[candidates]
        rows = torch.arange(len(targets))
        clash = candidates[None, :] == targets[:, None]  # the target elsewhere: not a negative
        clash[rows, rows] = False
        return F.cross_entropy(scores.masked_fill(clash, float("-inf")), rows)


# --------------------------------------------------------------------------- training
def fit_shard(
    config: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    report: Callable[[dict[str, Any]], None] | None = None,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Fit on this rank's shard (``rank::world``) of the examples of ``config["arrays"]``, in
    plain PyTorch or under Ray Train. Batches hold prefixes of similar length (shuffled within
    lengths, batches in random order): most prefixes are short, and the GRU then runs ~3 steps
    instead of ``max_len``."""
    p = GRU4RecParams(**config["model"])
    n_items = int(config["n_items"])
    torch.set_num_threads(max(1, int(config["threads"])))
    torch.manual_seed(p.seed)
    with np.load(config["arrays"], allow_pickle=False) as data:
        usable = len(data["targets"]) // world * world  # equal shards: DDP steps in lockstep
        x = torch.as_tensor(data["prefixes"][:usable][rank::world].astype(np.int64))
        y = torch.as_tensor(data["targets"][:usable][rank::world].astype(np.int64))
        counts = data["counts"].astype(np.float64)
    n = len(y)
    if n == 0:
        raise ValueError(
            f"gru4rec: no training example for rank {rank} of {world}: sessions need at least "
            "two known items; give more sessions or fewer workers (train.num_workers)."
        )
    base = GRU4RecNet(n_items, p.dim, p.hidden, p.dropout)
    base.known.copy_(torch.as_tensor(counts > 0))
    sampled = n_items > p.full_softmax_items
    cdf = negative_cdf(counts, power=1.0) if sampled else None
    log_q = torch.as_tensor(np.log(np.maximum(counts, 1.0) / counts.sum()), dtype=torch.float32)
    model = prepare(base) if prepare is not None else base
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(p.seed + rank)
    lengths = (x != PAD).sum(1)
    model.train()

    def losses() -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=gen)
        order = order[torch.argsort(lengths[order], stable=True)]
        batches = torch.split(order, p.batch_size)
        for b in torch.randperm(len(batches), generator=gen).tolist():
            idx = batches[b]
            if cdf is None:
                yield model(x[idx], y[idx])
            else:
                yield model(x[idx], y[idx], draw_negatives(cdf, (p.negatives,), gen), log_q)

    history = train_epochs(p.epochs, losses, [optimizer], ("examples", n), report, "gru4rec",
                           p.batch_size)  # fmt: skip
    state = {k: v.detach().clone() for k, v in base.state_dict().items()} if rank == 0 else None
    return state, final_metrics(history)


def train_func(config: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`fit_shard`, rank 0 reporting the weights at the end."""
    ray_worker(fit_shard, config, WEIGHTS)


def write_examples(
    sessions: Sessions, n_items: int, p: GRU4RecParams, arrays: Path, threads: int
) -> dict[str, Any]:
    """Write the shuffled examples (iid shards for ``rank::world``) and the target counts to
    ``arrays``; return the fit's config."""
    if len(sessions.items) and (sessions.items.min() < 0 or sessions.items.max() >= n_items):
        raise ValueError(
            f"gru4rec: sessions hold item indices {sessions.items.min()}..{sessions.items.max()}"
            f" but n_items={n_items}: code the sessions in the vocabulary of n_items entries "
            "(index 0 = padding)."
        )
    prefixes, targets = prefix_examples(sessions, p.max_len)
    if len(targets) == 0:
        raise ValueError(
            "gru4rec: no training example: no session has two known items. Give more sessions."
        )
    order = np.random.default_rng(p.seed).permutation(len(targets))
    counts = np.bincount(targets, minlength=n_items).astype(np.int64)
    np.savez(arrays, prefixes=prefixes[order], targets=targets[order], counts=counts)
    return {"arrays": str(arrays), "n_items": n_items, "threads": threads, "model": p.model_dump()}


# --------------------------------------------------------------------------- model
@register_model
class GRU4Rec(SessionModel):
    """A GRU over the visit so far; scores are next-item probabilities (a softmax over the items
    seen as a training target; the others, padding and empty prefixes score 0).

    ``threads``: torch threads :meth:`score` runs on, 1 unless raised. A GRU step on a batch of
    prefixes is small: on the shared 2-core machine, scoring 27k prefixes took 0.6-1.2 s on one
    thread and 5.7-7.3 s on two while other processes ran (spinning OpenMP threads starve each
    other); raise it only where the cores are the scorer's own."""

    name = "gru4rec"
    defaults: ClassVar[dict[str, Any]] = GRU4RecParams().model_dump()
    grid: ClassVar[dict[str, Sequence[Any]]] = {"dim": [64, 128], "epochs": [3, 6]}

    def __init__(self, n_items: int, params: dict[str, Any], net: GRU4RecNet) -> None:
        super().__init__(n_items, params)
        self.net = net.eval()
        self.fit_metrics: dict[str, Any] = {}
        self.threads = 1

    @classmethod
    def _from_state(cls, n_items: int, p: GRU4RecParams, state: dict[str, torch.Tensor]) -> Self:
        net = GRU4RecNet(n_items, p.dim, p.hidden, p.dropout)
        net.load_state_dict(state)
        return cls(n_items, p.model_dump(), net)

    @classmethod
    def fit(cls, sessions: Sessions, n_items: int, *, threads: int = 1, **params: Any) -> Self:
        """Plain PyTorch in this process on ``threads`` torch threads (the caller's count is
        restored after). One by default: a step is small (256 short prefixes), so a second
        thread saved only ~25% on 2 idle cores (14.5 s against 18.8 s on the synthetic shop)
        but cost 4-15x (77-282 s) while another process used them, spinning OpenMP threads
        starving each other (see :func:`recsys.core.ray_runtime.worker_env`)."""
        if threads < 1:
            raise ValueError(f"gru4rec: threads must be >= 1, got {threads}")
        p = parse_params(GRU4RecParams, params, "gru4rec")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gru4rec_") as tmp:
            config = write_examples(sessions, n_items, p, Path(tmp) / EXAMPLES, threads)
            state, metrics = run_plain(fit_shard, config)
        model = cls._from_state(n_items, p, state)
        model.fit_metrics = metrics | {"backend": "plain", "seconds": _since(started)}
        return model

    @classmethod
    def fit_ray(cls, settings: Settings, sessions: Sessions, n_items: int, **params: Any) -> Self:
        """The same fit on ``settings.train.num_workers`` Ray Train workers (DDP when more than
        one), or in this process when Ray is not wanted
        (:func:`recsys.core.ray_runtime.ray_wanted`). The examples go through a temporary
        file under the data root's scratch folder, which every node of a cluster sees
        (``Settings.scratch_dir``)."""
        from recsys.core.ray_runtime import fit_torch, worker_threads

        p = parse_params(GRU4RecParams, params, "gru4rec")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gru4rec_", dir=settings.scratch_dir) as tmp:
            config = write_examples(
                sessions, n_items, p, Path(tmp) / EXAMPLES, worker_threads(settings)
            )
            name = f"gru4rec_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}"
            state, metrics, _ = fit_torch(settings, train_func, config, name, WEIGHTS,
                                          plain=fit_shard)  # fmt: skip
        model = cls._from_state(n_items, p, state)
        model.fit_metrics = metrics | {"seconds": _since(started)}
        return model

    def score(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        """Next-item probabilities, in batches of similar-length prefixes (the GRU then runs
        only the steps they need), on :attr:`threads` torch threads; the caller's torch thread
        count is restored."""
        max_len = int(self.params["max_len"])
        out = np.zeros((len(prefixes), self.n_items), dtype=np.float32)
        x = torch.as_tensor(pad_prefixes(prefixes, max_len, self.n_items))
        lengths = (x != PAD).sum(1).numpy()
        rows = np.flatnonzero(lengths > 0)
        if len(rows) == 0:
            return out
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        chunk = max(1, SCORE_CELLS // self.n_items)
        previous = torch.get_num_threads()
        wanted = max(1, int(self.threads))
        if wanted != previous:
            torch.set_num_threads(wanted)
        try:
            with torch.inference_mode():
                for lo in range(0, len(rows), chunk):
                    r = rows[lo : lo + chunk]
                    logits = self.net.logits(self.net.encode(x[r]))
                    out[r] = torch.softmax(logits, dim=1).numpy()
        finally:
            if wanted != previous:
                torch.set_num_threads(previous)
        return out

    def save(self, run: Run, part: str) -> None:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_tensors(part, self.net.state_dict())
        self.save_params(run, part)

    @classmethod
    def load(cls, run: Run, part: str) -> Self:
        n_items, params = cls.read_params(run, part)
        p = parse_params(GRU4RecParams, params, "gru4rec")
        return cls._from_state(n_items, p, run.read_tensors(part, "torch"))


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
