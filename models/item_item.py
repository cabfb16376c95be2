"""Item-to-item neighbours: the behavioural candidate source of the served pipeline.

EASE (Steck 2019) is the strongest single model on sparse fashion purchases in our evaluation
(ASOS Recall@10 0.038 against 0.031 for tuned ALS), but its weight matrix is dense (items x
items: 3.5 GB at 30k items). Serving keeps only each item's ``top_n`` largest weights in a CSR
matrix, so scoring a user is a sparse gather over the rows of their history: microseconds per
request, a few MB on disk. Catalogues too large for a dense inverse get EASE solved per item
over its strongest co-purchase partners (:class:`~models.baselines.LocalEASE`, 99% of dense
EASE's Recall@10 on ASOS), which needs only the sparse Gram matrix; ``cosine`` (item-kNN)
stays available.

The ranker's training rows need EASE as if fitted without each label user's held-out purchase.
Fitting it twice (without the labels, then on everything) doubled ``recsys train``'s cost;
:class:`HeldOutEase` derives each label user's rows from the one fit on everything instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.baselines import EASE, ItemKNN, LocalEASE, top_k_per_row
from recsys.core.arrays import top_k
from recsys.core.run import Run

log = logging.getLogger(__name__)

Method = Literal["auto", "ease", "ease_local", "cosine"]
NEIGHBOURS = "item_neighbours"  # its part of a run folder


@dataclass
class ItemNeighbors:
    """A sparse item x item weight matrix over a fixed vocabulary (row/column = item index).

    Index 0 is reserved for unknown items (an empty row), matching the two-tower encoder's
    vocabulary, so that every candidate source of the pipeline speaks the same item indices.
    """

    matrix: sp.csr_matrix
    method: str
    params: dict[str, float | int]
    #: the dense EASE fit, kept only when asked (``keep_dense``) for :class:`HeldOutEase`
    dense: HeldOutEase | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return self.matrix.shape[0]

    @classmethod
    def fit(
        cls,
        interactions: sp.csr_matrix,
        method: Method = "auto",
        top_n: int = 200,
        ease_lambda: float = 400.0,
        ease_memory_gb: float = 8.0,
        keep_dense: bool = False,
        ease_support: int = 300,
    ) -> ItemNeighbors:
        """Fit on a users x items matrix whose columns are the vocabulary (column 0 unused).

        ``auto`` picks EASE when its dense matrix fits ``ease_memory_gb``, else ``ease_local``
        (EASE over each item's ``ease_support`` strongest co-purchase partners).
        ``keep_dense``: keep EASE's dense weights in ``dense`` (held-out rows need them; they
        cost ``EASE.required_gb`` until dropped).
        """
        n = interactions.shape[1]
        if method == "auto":
            method = "ease" if EASE.required_gb(n) <= ease_memory_gb else "ease_local"
        if method == "ease":
            model = EASE(ease_lambda, memory_gb=ease_memory_gb).fit(interactions)
            weights = _dense_top_n(model.weights, top_n)
            dense = HeldOutEase.of(model, weights, top_n) if keep_dense else None
            del model
            params: dict[str, float | int] = {"lambda": ease_lambda, "top_n": top_n}
        elif method == "ease_local":
            local = LocalEASE(ease_lambda, ease_support).fit(interactions).weights
            local.data[local.data < 0] = 0.0  # serving keeps the largest positive weights
            local.eliminate_zeros()
            weights, dense = top_k_per_row(local, top_n), None
            params = {"lambda": ease_lambda, "support": ease_support, "top_n": top_n}
        elif method == "cosine":
            weights = ItemKNN(top_n).fit(interactions).similarity
            dense, params = None, {"top_n": top_n}
        else:
            raise ValueError(
                f"item-item method must be auto, ease, ease_local or cosine, got {method!r}"
            )
        weights.eliminate_zeros()
        log.info("item-item %s: %d items, %d weights", method, n, weights.nnz)
        return cls(weights.tocsr(), method, params, dense)

    def gather(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries of the history rows: (columns, weights, source row) concatenated.

        The sum of these weights per column is the EASE/cosine score of a user with that
        history; the source row tells which history item proposed a candidate (its reason).
        """
        m = self.matrix
        history = history[(history > 0) & (history < m.shape[0])]
        if len(history) == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, np.empty(0, dtype=np.float32), empty
        starts, ends = m.indptr[history], m.indptr[history + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, np.empty(0, dtype=np.float32), empty
        # positions of every entry of every history row, without a Python loop
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        return (
            m.indices[offsets].astype(np.int64),
            m.data[offsets],
            np.repeat(history, lengths),
        )

    def scores(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items, summed weight) for a history of item indices, unsorted, items unique."""
        cols, weights, _ = self.gather(history)
        if len(cols) == 0:
            return cols, weights
        items, inverse = np.unique(cols, return_inverse=True)
        return items, np.bincount(inverse, weights=weights).astype(np.float32)

    def neighbours(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` heaviest neighbours of one item index, best first."""
        if not 0 < item < self.n_items:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        lo, hi = self.matrix.indptr[item], self.matrix.indptr[item + 1]
        cols, data = self.matrix.indices[lo:hi], self.matrix.data[lo:hi]
        order = np.argsort(-data, kind="stable")[:k]
        return cols[order].astype(np.int64), data[order]

    # ------------------------------------------------------------------ persistence
    def save(self, run: Run, name: str = NEIGHBOURS) -> None:
        """Parquet triplets (item, neighbour, weight); method and params in the metadata."""
        coo = self.matrix.tocoo()
        frame = pd.DataFrame(
            {"item": coo.row.astype(np.int32), "neighbour": coo.col.astype(np.int32),
             "weight": coo.data.astype(np.float32)}
        )  # fmt: skip
        frame.attrs = {"method": self.method, "n_items": self.n_items, **self.params}
        run.write_table(name, frame)

    @classmethod
    def load(cls, run: Run, name: str = NEIGHBOURS) -> ItemNeighbors:
        frame = run.read_table(name)
        meta = dict(frame.attrs)
        n = int(meta.pop("n_items"))
        method = str(meta.pop("method"))
        matrix = sp.csr_matrix(
            (frame["weight"].to_numpy(np.float32),
             (frame["item"].to_numpy(np.int64), frame["neighbour"].to_numpy(np.int64))),
            shape=(n, n), dtype=np.float32,
        )  # fmt: skip
        matrix.sort_indices()
        return cls(matrix, method, meta)


@dataclass
class HeldOutEase:
    """EASE's neighbour rows for one user as if EASE had been fitted without that user's
    held-out items, derived exactly from the fit on everything.

    Removing a user's held-out items ``l`` (their kept items: ``h``) from the binary matrix
    changes the Gram matrix by ``l h^T + h l^T + l l^T = U C U^T`` with ``U = [l, h]`` and
    ``C = [[1, 1], [1, 0]]``: a rank-2 change. By Sherman-Morrison-Woodbury the inverse
    without them is ``P + Q (C^-1 - U^T Q)^-1 Q^T`` with ``Q = P U``, so the rows a request
    gathers cost O(items x history) instead of a second O(items^3) fit, and equal that fit's
    (to float32 rounding; a test compares them).
    """

    weights: np.ndarray  # EASE's dense B of the fit on everything (zero diagonal)
    inverse_diagonal: np.ndarray  # diag(P) of that fit: P[i, j] = -B[i, j] * P[j, j], i != j
    top_n: int
    #: per item, half the smallest of the ``top_n`` weights its row keeps in that fit (0 when
    #: it keeps fewer): a user's row searches only the weights above it while ``top_n`` remain
    floors: np.ndarray

    @classmethod
    def of(cls, model: EASE, kept: sp.csr_matrix, top_n: int) -> HeldOutEase:
        """From a dense EASE fit and the rows it kept (:func:`_dense_top_n`)."""
        counts = np.diff(kept.indptr)
        floors = np.zeros(kept.shape[0], dtype=np.float32)
        full = np.flatnonzero(counts >= min(top_n, kept.shape[1] - 1))
        if len(full) and kept.nnz:
            smallest = np.minimum.reduceat(kept.data, kept.indptr[:-1][counts > 0])
            floors[full] = 0.5 * smallest[np.searchsorted(np.flatnonzero(counts > 0), full)]
        return cls(model.weights, model.inverse_diagonal, top_n, floors)

    @property
    def n_items(self) -> int:
        return len(self.inverse_diagonal)

    def gather(
        self, kept: np.ndarray, held_out: np.ndarray, seeds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`ItemNeighbors.gather` over the rows of EASE fitted without this user's
        ``held_out`` items (``kept``: all their other items), each row cut to its ``top_n``
        largest positive weights as :meth:`ItemNeighbors.fit` cuts them.

        Built for the ranker's rows (one call per label user): every dense row the user
        needs is read from memory once, Q comes from one product with them, and the seeds'
        rows are corrected in place, ``B'[r, j] = (B[r, j] - qk[:, r] . q[:, j] / d[j]) d[j]
        / d'[j]``, with no n x n sparse matrix per user.
        """
        n, d = self.n_items, self.inverse_diagonal
        seeds = seeds[(seeds > 0) & (seeds < n)]
        if len(seeds) == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, np.empty(0, dtype=np.float32), empty
        held_out = np.unique(held_out[(held_out > 0) & (held_out < n)])
        kept = np.setdiff1d(kept[(kept > 0) & (kept < n)], held_out)
        rows, seed_row = np.unique(seeds, return_inverse=True)
        if len(held_out) == 0:
            block = self.weights[rows]  # the fit on everything
        else:
            union = np.union1d(np.union1d(rows, kept), held_out)
            weights = self.weights[union]  # every row this user needs, read from memory once
            # Q's columns: the sums of P's rows over the held-out and over the kept items,
            # P[i, j] = -B[i, j] d[j] off the diagonal and d[i] on it
            pick = np.zeros((2, len(union)), dtype=weights.dtype)
            pick[0, np.searchsorted(union, held_out)] = 1.0
            pick[1, np.searchsorted(union, kept)] = 1.0
            q = (pick @ weights) * -d
            q[0, held_out] += d[held_out]
            q[1, kept] += d[kept]
            upu = np.array([[q[0, held_out].sum(), q[1, held_out].sum()],
                            [q[0, kept].sum(), q[1, kept].sum()]], dtype=np.float64)  # fmt: skip
            inner = np.linalg.inv(np.array([[0.0, 1.0], [1.0, -1.0]]) - upu).astype(np.float32)
            qk = inner @ q  # (Q (C^-1 - U^T Q)^-1)^T: 2 x items
            new_d = d + np.einsum("ij,ij->j", qk, q)  # diag(P) without the held-out items
            # B'[r, j] = -P'[r, j] / d'[j] = (B[r, j] - qk[:, r] . q[:, j] / d[j]) d[j] / d'[j]
            block = weights[np.searchsorted(union, rows)]
            block -= qk[:, rows].T @ (q / d)
            block *= d / new_d
        block[np.arange(len(rows)), rows] = 0.0
        k = min(self.top_n, n - 1)
        floors = self.floors[rows]
        cols, vals = [], []
        for r, floor in enumerate(floors):
            # while k weights stay above the row's floor, its top k are among them: no sort
            found = np.flatnonzero(block[r] > floor)
            if floor > 0 and len(found) < k:
                found = np.flatnonzero(block[r] > 0)
            best = np.sort(found[top_k(block[r, found], k)])
            cols.append(best)
            vals.append(block[r, best])
        sizes = np.array([len(c) for c in cols])[seed_row]
        return (
            np.concatenate([cols[r] for r in seed_row]),
            np.concatenate([vals[r] for r in seed_row]),
            np.repeat(seeds, sizes),
        )


def _dense_top_n(weights: np.ndarray, top_n: int, chunk: int = 2048) -> sp.csr_matrix:
    """The ``top_n`` largest positive entries of each row of a dense matrix, as CSR."""
    n, m = weights.shape
    k = min(top_n, m - 1)
    rows, cols, vals = [], [], []
    for lo in range(0, n, chunk):
        block = weights[lo : lo + chunk]
        top = top_k(block, k)
        top_vals = np.take_along_axis(block, top, axis=1)
        keep = top_vals > 0
        rows.append(np.repeat(np.arange(lo, lo + len(block)), keep.sum(axis=1)))
        cols.append(top[keep])
        vals.append(top_vals[keep])
    return sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32),
         (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, m), dtype=np.float32,
    )  # fmt: skip
