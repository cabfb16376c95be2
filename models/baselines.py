"""Classic collaborative-filtering peers that any new model must beat, on one sparse matrix.

Every peer is fitted on the same user x item matrix (``scipy.sparse`` CSR, float32) and ranks
with the same code (:meth:`BaselineModel.recommend`): scores in user batches, already-seen items
removed, top K by ``numpy.argpartition``. Sharing the ranking and exclusion code is what makes
the comparison honest: only the scoring differs between models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.core.arrays import top_k

log = logging.getLogger(__name__)

DEFAULT_EASE_MEMORY_GB = 12.0


@dataclass
class InteractionMatrix:
    """A user x item count matrix plus the id <-> row/column mappings."""

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_index: dict[str, int] = field(repr=False)
    item_index: dict[str, int] = field(repr=False)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        user_ids: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> InteractionMatrix:
        """Count (user_id, item_id) rows; ids outside the given vocabularies are dropped."""
        users = np.asarray(sorted(frame["user_id"].unique()) if user_ids is None else user_ids)
        items = np.asarray(sorted(frame["item_id"].unique()) if item_ids is None else item_ids)
        user_index = {u: i for i, u in enumerate(users.tolist())}
        item_index = {t: i for i, t in enumerate(items.tolist())}
        rows = frame["user_id"].map(user_index)
        cols = frame["item_id"].map(item_index)
        keep = rows.notna() & cols.notna()
        matrix = sp.csr_matrix(
            (
                np.ones(int(keep.sum()), dtype=np.float32),
                (rows[keep].to_numpy(np.int64), cols[keep].to_numpy(np.int64)),
            ),
            shape=(len(users), len(items)),
            dtype=np.float32,
        )
        matrix.sum_duplicates()
        return cls(matrix, users, items, user_index, item_index)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


def binarize(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The same pattern with every stored value set to 1 (float32)."""
    out = matrix.astype(np.float32, copy=True).tocsr()
    out.data[:] = 1.0
    return out


class BaselineModel:
    """Shared ranking: subclasses implement ``fit`` and ``_scores`` (dense batch x items)."""

    name = "base"
    batch_size = 2048

    def __init__(self) -> None:
        self.train_matrix: sp.csr_matrix | None = None

    def fit(self, matrix: sp.csr_matrix) -> BaselineModel:
        raise NotImplementedError

    def params(self) -> dict[str, float | int]:
        return {}

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def recommend(
        self, user_rows: Sequence[int] | np.ndarray, k: int, exclude_seen: bool = True
    ) -> list[list[int]]:
        """Top-``k`` item columns per user row, best first, without the user's training items."""
        if self.train_matrix is None:
            raise RuntimeError(f"{type(self).__name__}.recommend called before fit()")
        rows = np.asarray(user_rows, dtype=np.int64)
        n_items = self.train_matrix.shape[1]
        k = min(k, n_items)
        out: list[list[int]] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            scores = np.array(self._scores(batch), dtype=np.float32, copy=True)
            if exclude_seen:
                seen = self.train_matrix[batch]
                scores[
                    np.repeat(np.arange(len(batch)), np.diff(seen.indptr)), seen.indices
                ] = -np.inf
            top = top_k(scores, k)
            ranked_scores = np.take_along_axis(scores, top, axis=1)
            for items, s in zip(top, ranked_scores, strict=True):
                out.append(items[np.isfinite(s)].tolist())
        return out


class ItemKNN(BaselineModel):
    """Cosine item-item similarity, ``k`` neighbours kept per item; score = sum over history."""

    name = "item_knn"

    def __init__(self, k: int = 100) -> None:
        super().__init__()
        self.k = k

    def params(self) -> dict[str, float | int]:
        return {"k": self.k}

    def fit(self, matrix: sp.csr_matrix) -> ItemKNN:
        self.train_matrix = matrix.tocsr()
        x = binarize(matrix)
        gram = (x.T @ x).tocsr().astype(np.float32)
        norms = np.sqrt(gram.diagonal()).astype(np.float32)
        norms[norms == 0] = 1.0
        inv = sp.diags(1.0 / norms).astype(np.float32)
        sim = (inv @ gram @ inv).tocsr()
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.similarity = top_k_per_row(sim, self.k)
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        x = binarize(self.train_matrix[user_rows])
        return (x @ self.similarity).toarray()


def top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest stored values of each row (CSR in, CSR out)."""
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    keep = np.zeros(len(data), dtype=bool)
    for row in range(matrix.shape[0]):
        lo, hi = indptr[row], indptr[row + 1]
        keep[lo + top_k(data[lo:hi], k)] = True
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(indptr))
    return sp.csr_matrix(
        (data[keep], (rows[keep], indices[keep])), shape=matrix.shape, dtype=np.float32
    )


class ALS(BaselineModel):
    """implicit's CPU ALS (Hu, Koren, Volinsky 2008): confidence ``1 + alpha * count``.

    implicit's default ``alpha=1`` is far from the best on purchase data (0.018 vs 0.035
    Recall@10 on ASOS), which is why the harness tunes alpha with factors and regularization.
    """

    name = "als"

    def __init__(
        self,
        factors: int = 128,
        regularization: float = 0.5,
        alpha: float = 20.0,
        iterations: int = 15,
        random_state: int = 0,
    ) -> None:
        super().__init__()
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state

    def params(self) -> dict[str, float | int]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
        }

    def fit(self, matrix: sp.csr_matrix) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.train_matrix = matrix.tocsr()
        # implicit parallelises itself; a multi-threaded BLAS underneath oversubscribes the
        # cores and slows ALS down by an order of magnitude (implicit warns about it).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
                calculate_training_loss=False,
            )
            model.fit(self.train_matrix.astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        return self.user_factors[user_rows] @ self.item_factors.T


class EASE(BaselineModel):
    """EASE^R (Steck 2019): B = I - P / diag(P), P = (X^T X + lambda I)^-1, zero diagonal.

    After :meth:`fit`, ``weights`` holds B and ``inverse_diagonal`` diag(P): P[i, j] is then
    -B[i, j] * P[j, j] off the diagonal, which is what
    :class:`~models.item_item.HeldOutEase` needs to answer without a user's held-out items.

    The item x item inverse is dense: for ~30k items that is 3.5 GB in float32 and a naive
    float64 ``np.linalg.inv`` needs several copies (23 GB on ASOS). This fit keeps one float32
    copy and inverts it in place with a Cholesky factorisation (LAPACK potrf/potri via scipy).
    """

    name = "ease"

    def __init__(self, lambda_: float = 400.0, memory_gb: float = DEFAULT_EASE_MEMORY_GB) -> None:
        super().__init__()
        self.lambda_ = lambda_
        self.memory_gb = memory_gb

    def params(self) -> dict[str, float | int]:
        return {"lambda": self.lambda_}

    @staticmethod
    def required_gb(n_items: int) -> float:
        """Memory of the one dense float32 item x item matrix EASE holds."""
        return n_items * n_items * 4 / 1024**3

    def fit(self, matrix: sp.csr_matrix) -> EASE:
        n = matrix.shape[1]
        need = self.required_gb(n)
        if need > self.memory_gb:
            raise MemoryError(
                f"EASE on {n:,} items needs a {need:.1f} GB dense item x item matrix, more than "
                f"its {self.memory_gb:.1f} GB budget: raise EASE(memory_gb=...) if the machine "
                "has the memory, or keep only items with enough interactions."
            )
        self.train_matrix = matrix.tocsr()
        x = binarize(matrix)
        started = time.perf_counter()
        # One dense float32 buffer, factorised and inverted in place (LAPACK via scipy)
        inv = np.asarray((x.T @ x).toarray(), dtype=np.float32)
        if not inv.flags.c_contiguous:
            inv = inv.T  # symmetric: the transpose of an F-ordered buffer is C-ordered
        inv[np.diag_indices(n)] += np.float32(self.lambda_)
        _inverse_spd_in_place(inv)
        diag = inv.diagonal().copy()
        inv /= -diag[np.newaxis, :]  # B[i, j] = -P[i, j] / P[j, j], in place
        inv[np.diag_indices(n)] = 0.0
        self.weights = inv
        self.inverse_diagonal = diag  # with ``weights`` it gives P back (held-out rows)
        log.info(
            "EASE lambda=%s on %d items in %.1fs", self.lambda_, n, time.perf_counter() - started
        )
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        x = binarize(self.train_matrix[user_rows])
        return np.asarray(x @ self.weights)


class LocalEASE(BaselineModel):
    """EASE with each item's column solved over its ``support`` strongest co-purchase partners.

    Why: EASE's dense inverse needs items^2 memory and items^3 time (105k items: 41 GB, hours).
    Column j of EASE is the ridge regression of item j on the other items, ``b = (G_{-j,-j} +
    lambda I)^-1 G_{-j,j}``; restricting it to the items most often bought with j (the idea of
    fsSLIM, Ning & Karypis 2011) turns one huge solve into one small SPD solve per item
    (``support`` x ``support`` at most), batched through torch's Cholesky, with only the sparse
    Gram matrix in memory. Items bought with every other item (or ``support`` >= items - 1)
    give EASE exactly; on ASOS, ``support`` 300 keeps 99% of dense EASE's Recall@10.
    """

    name = "ease_local"
    batch_size = 2048

    def __init__(
        self,
        lambda_: float = 400.0,
        support: int = 300,
        solve_batch: int = 256,
        hub_items: int = 8192,
    ) -> None:
        """``hub_items``: the most-connected items whose co-counts among themselves are kept
        dense (hub_items^2 floats) so that no system is filled from their long Gram rows."""
        super().__init__()
        self.lambda_ = lambda_
        self.support = support
        self.solve_batch = solve_batch
        self.hub_items = hub_items

    def params(self) -> dict[str, float | int]:
        return {"lambda": self.lambda_, "support": self.support}

    def fit(self, matrix: sp.csr_matrix) -> LocalEASE:
        import torch

        self.train_matrix = matrix.tocsr()
        started = time.perf_counter()
        x = binarize(matrix)
        gram = (x.T @ x).tocsr().astype(np.float32)
        n = gram.shape[0]
        partners = gram.copy()
        partners.setdiag(0)
        partners.eliminate_zeros()
        partners = top_k_per_row(partners, self.support)  # row j: j's support, by co-count
        partners.sort_indices()
        sizes = np.diff(partners.indptr)
        order = np.argsort(sizes, kind="stable")  # similar sizes batch with little padding
        order = order[sizes[order] > 0]
        # Hubs (long Gram rows) are in most supports: their co-counts with a light item are read
        # from the light item's short row (the Gram matrix is symmetric), among themselves from
        # one dense block, so filling a system never scans a hub's row.
        degree = np.diff(gram.indptr)
        hubs = np.argsort(-degree, kind="stable")[: min(self.hub_items, n)]
        hubs = np.sort(hubs[degree[hubs] > self.support])
        hub_slot = np.full(n, -1, dtype=np.int64)
        hub_slot[hubs] = np.arange(len(hubs))
        hub_block = gram[hubs][:, hubs].toarray() if len(hubs) else np.zeros((0, 0), np.float32)
        position = np.full(n, -1, dtype=np.int64)
        rows, cols, vals = [], [], []
        for lo in range(0, len(order), self.solve_batch):
            items = order[lo : lo + self.solve_batch]
            width = int(sizes[items].max())
            system = np.zeros((len(items), width, width), dtype=np.float32)
            target = np.zeros((len(items), width, 1), dtype=np.float32)
            support = np.zeros((len(items), width), dtype=np.int64)
            used = np.zeros((len(items), width), dtype=bool)
            for b, j in enumerate(items):
                lo_j, hi_j = partners.indptr[j], partners.indptr[j + 1]
                idx = partners.indices[lo_j:hi_j]
                m = len(idx)
                support[b, :m], used[b, :m] = idx, True
                target[b, :m, 0] = partners.data[lo_j:hi_j]
                position[idx] = np.arange(m)
                slots = hub_slot[idx]
                heavy = slots >= 0
                if heavy.any():
                    at, hub_at = np.flatnonzero(heavy), slots[heavy]
                    system[b][np.ix_(at, at)] = hub_block[np.ix_(hub_at, hub_at)]
                light = np.flatnonzero(~heavy)
                starts, ends = gram.indptr[idx[light]], gram.indptr[idx[light] + 1]
                lengths = ends - starts
                offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
                offsets += np.arange(int(lengths.sum()))
                other = position[gram.indices[offsets]]
                inside = other >= 0
                mine = np.repeat(light, lengths)[inside]
                other, values = other[inside], gram.data[offsets[inside]]
                system[b, mine, other] = values
                system[b, other, mine] = values
                position[idx] = -1
            system[:, np.arange(width), np.arange(width)] += np.float32(self.lambda_)
            factor = torch.linalg.cholesky(torch.from_numpy(system))
            solution = torch.cholesky_solve(torch.from_numpy(target), factor).numpy()[..., 0]
            batch_rows, slots = np.nonzero(used)
            rows.append(support[batch_rows, slots])
            cols.append(items[batch_rows])
            vals.append(solution[batch_rows, slots])
        self.weights = sp.csr_matrix(
            (np.concatenate(vals) if vals else np.empty(0, np.float32),
             (np.concatenate(rows) if rows else np.empty(0, np.int64),
              np.concatenate(cols) if cols else np.empty(0, np.int64))),
            shape=(n, n), dtype=np.float32,
        )  # fmt: skip
        log.info("EASE (local, support %d) lambda=%s on %d items in %.1fs", self.support,
                 self.lambda_, n, time.perf_counter() - started)  # fmt: skip
        return self

    def _scores(self, user_rows: np.ndarray) -> np.ndarray:
        return np.asarray((binarize(self.train_matrix[user_rows]) @ self.weights).toarray())


def _inverse_spd_in_place(a: np.ndarray, chunk: int = 1024) -> None:
    """Invert a C-contiguous symmetric positive definite float32 matrix in its own buffer.

    LAPACK ``spotrf`` + ``spotri`` through scipy's OpenBLAS, on the F-ordered view of the
    same memory (the matrix is symmetric). On the 29.7k-item ASOS matrix here (2-core AMD
    EPYC): 49 + 104 s, against 74 + 169 s for torch's MKL (whose ``potri`` is slow on this
    CPU); both in place, 3.7 GB peak. ``potri`` fills one triangle only: the other is copied
    over ``chunk`` rows at a time, so no second matrix is ever allocated.
    """
    from scipy.linalg import lapack

    view = a.T  # F-ordered: LAPACK's lower triangle is a's upper one
    factor, info = lapack.spotrf(view, lower=1, overwrite_a=1, clean=0)
    if info == 0:
        factor, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"EASE: X^T X + lambda I is not positive definite (LAPACK info {info} at item "
            f"{abs(info)}): a NaN or negative count in the interactions, or lambda <= 0"
        )
    if not np.shares_memory(factor, a):  # LAPACK got a copy: the result is not in a yet
        log.warning("EASE: the inverse was not computed in place; peak memory doubled")
        a[...] = factor.T
    n = a.shape[0]
    for lo in range(0, n, chunk):  # a's upper triangle holds the inverse: mirror it below
        hi = min(lo + chunk, n)
        a[hi:, lo:hi] = a[lo:hi, hi:].T
        block = a[lo:hi, lo:hi]
        below = np.tril_indices(hi - lo, -1)
        block[below] = block.T[below]
