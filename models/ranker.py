"""The ranker: LightGBM over the merged candidates of every source.

Each source is good at something different (EASE at co-purchase structure, ALS at what the
whole purchase matrix shares, the two-tower at profile and content, rules at complements,
popularity at what sells now); a learned ranker
over their scores plus user, item and user x item features decides per user which to trust.
The objective is configurable (``RECSYS_RANKING__OBJECTIVE``): LambdaRank optimises NDCG over
each user's list directly, a binary (pointwise) loss was the least noisy on sparse data (see
``OBJECTIVES``). The model is stored in
LightGBM's own text format (no pickle), with the feature names it expects.

Serving compiles the trees to machine code with lleaves (LLVM): one request scores a few
hundred candidates, where LightGBM's ``predict`` spends most of its time on per-call overhead
(100 trees, 200 rows of 30 features: 0.63 against 0.05 ms, the same scores to 1e-15; the H&M
served ranker stage, conversion included: 0.97 against 0.26 ms). The compiled library is
specific to the CPU it was built for (host features such as AVX-512), so it is cached by model
and CPU, never shipped inside a run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.core.run import Run

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "lambda_l2": 10.0,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambdarank_truncation_level": 20,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}
#: Objectives compared in the ASOS study (5-fold over the label users, NDCG@10 of the reordered
#: candidates): binary 0.0210, rank_xendcg 0.0208, lambdarank 0.0199, item-item alone 0.0198.
#: With one positive among ~200 candidates per user and ~2k users whose label is reachable,
#: the pointwise loss is the least noisy; the others stay available. 100 rounds at learning
#: rate 0.1 scored the same as 300 at 0.03 (NDCG@10 0.0210 both) and predict 2.7x faster
#: (0.29 against 0.79 ms for 200 candidates), which is serving latency.
OBJECTIVES = ("binary", "lambdarank", "rank_xendcg")
RANKER = "ranker"  # its part of a run folder (ranker.txt)


@dataclass
class Ranker:
    """A trained booster plus the feature order it was trained with."""

    booster: Any
    feature_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    compiled: Any = None  # lleaves.Model of the same trees (serving), else LightGBM predicts

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        feature_names: list[str],
        valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        rounds: int = 100,
        early_stopping: int | None = None,
        seed: int = 0,
        threads: int = 0,
        params: dict[str, Any] | None = None,
    ) -> Ranker:
        """Fit on candidate rows grouped per user (``groups``: rows per user, in order).

        ``valid`` is scored every round (``valid_ndcg@10`` in ``info``); it only stops the
        training early when ``early_stopping`` is set: with a few hundred validation users the
        curve is too noisy to pick a round from (it stopped at 12 of 300 on ASOS).
        """
        import lightgbm as lgb

        if len(feature_names) != features.shape[1]:
            raise ValueError(
                f"ranker: {features.shape[1]} feature columns but {len(feature_names)} names"
            )
        config = {**DEFAULT_PARAMS, **(params or {}), "seed": seed, "num_threads": threads}
        train = lgb.Dataset(features, labels, group=groups, feature_name=feature_names)
        # Only the validation rows are scored each round: scoring the training rows as well
        # cost a fifth of the fit (millions of rows on a session ranker) and informed nothing.
        sets: list[Any] = []
        names: list[str] = []
        callbacks: list[Any] = []
        if valid is not None:
            sets.append(
                lgb.Dataset(valid[0], valid[1], group=valid[2], feature_name=feature_names,
                            reference=train)
            )  # fmt: skip
            names.append("valid")
            if early_stopping:
                callbacks.append(lgb.early_stopping(early_stopping, verbose=False))
        evals: dict[str, Any] = {}
        callbacks.append(lgb.record_evaluation(evals))
        booster = lgb.train(config, train, rounds, valid_sets=sets or None,
                            valid_names=names or None, callbacks=callbacks)  # fmt: skip
        best = booster.best_iteration or rounds
        info = {
            "rounds": int(best),
            "params": {k: v for k, v in config.items() if k != "num_threads"},
            "train_rows": int(len(labels)),
            "train_groups": int(len(groups)),
        }
        if valid is not None:
            info["valid_ndcg@10"] = float(evals["valid"]["ndcg@10"][best - 1])
        gains = booster.feature_importance("gain")
        info["importance_gain"] = {
            name: round(float(g), 2)
            for name, g in sorted(zip(feature_names, gains, strict=True), key=lambda t: -t[1])
        }
        return cls(booster, list(feature_names), info)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores (higher is better); single-threaded, which is fastest for one request."""
        if len(features) == 0:
            return np.empty(0, dtype=np.float64)
        if self.compiled is not None:
            return self.compiled.predict(np.ascontiguousarray(features, np.float64), n_jobs=1)
        return self.booster.predict(features, num_iteration=self.info.get("rounds"), num_threads=1)

    def save(self, run: Run) -> None:
        """LightGBM's text model (no pickle) into ``run``."""
        run.write_text(RANKER, self.booster.model_to_string(num_iteration=self.info.get("rounds")))

    @classmethod
    def load(
        cls, run: Run, info: dict[str, Any] | None = None, compile_to: Path | None = None
    ) -> Ranker:
        """The saved ranker; with ``compile_to`` (a cache folder) its trees compiled for this
        CPU as well (:func:`compile_trees`), which is what serving predicts with."""
        import lightgbm as lgb

        text = run.read_text(RANKER)
        booster = lgb.Booster(model_str=text)
        info = dict(info or {})
        info.pop("rounds", None)  # the saved model holds exactly the kept rounds
        compiled = None
        if compile_to is not None:
            try:
                compiled = compile_trees(text, compile_to)
            except Exception as exc:  # a speed-up, not a requirement: LightGBM still scores
                log.warning(
                    "ranker %s: compiling its trees failed (%s: %s); serving predicts with "
                    "LightGBM, several times slower (RECSYS_RANKING__COMPILED=false "
                    "skips the attempt)", run.part(RANKER, "text"), type(exc).__name__, exc,
                )  # fmt: skip
        return cls(booster, booster.feature_name(), info, compiled)


def compile_trees(model_text: str, cache_dir: Path) -> Any:
    """A LightGBM text model compiled to machine code for this CPU by lleaves: predicts the
    same scores as the booster (a test holds them to 1e-6). Cached in ``cache_dir`` by the
    model's and the host CPU's hash, under a file lock so that the workers of one ``recsys
    serve --workers N`` compile it once (about a second for 100 trees) and the rest load it."""
    from importlib.metadata import version

    import lleaves
    import llvmlite.binding as llvm
    from filelock import FileLock

    cpu = f"{llvm.get_host_cpu_name()} {llvm.get_host_cpu_features().flatten()}"
    compiler = f"lleaves {version('lleaves')}, LLVM {llvm.llvm_version_info}"
    key = hashlib.sha256(f"{model_text}\0{cpu}\0{compiler}".encode()).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_file, library = cache_dir / f"{key[:32]}.txt", cache_dir / f"{key[:32]}.so"
    with FileLock(cache_dir / f"{key[:32]}.lock"):
        if not model_file.exists():
            _write_atomically(model_file, lambda path: path.write_text(model_text))
        model = lleaves.Model(model_file=str(model_file))
        if library.exists():  # lleaves loads a cached library as it is: only whole files here
            model.compile(cache=str(library))
        else:
            _write_atomically(library, lambda path: model.compile(cache=str(path)))
    return model


def _write_atomically(path: Path, write: Any) -> None:
    """``write(tmp)`` then rename to ``path``: a crash leaves no half-written file behind."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    write(partial)
    partial.replace(path)
