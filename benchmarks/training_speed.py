"""Training-speed benchmark: two-tower and item2vec through Ray Train against plain PyTorch.

Both sides run the same per-worker fit (``pipelines.two_tower_fit.fit_two_tower``,
``models.item2vec.fit_shard``) on the same arrays, built from a data root where `recsys
validate`, `features` and `materialize` have run, for the configured (full-run) number of
epochs. In one process and one Ray instance, ``--repeats`` rounds of: the plain loop,
``TorchTrainer`` with one worker using all cores (what `recsys train` does) and, with
``--two-workers``, two one-core workers; for the two-tower model also the other side of the
sparse choice (SparseAdam on the id tables, Adam on the rest: the default since this
benchmark; ``plain_dense`` is the old all-dense Adam), both scored by recall@10. Ray's cost is
split into its start-up (``ray.init``, once per process), an empty ``TorchTrainer`` (worker
start and teardown: fixed, not ours), our per-worker setup (arrays, model), the loop, and the
rest (checkpoint in and out).

    .venv/bin/python benchmarks/training_speed.py --home /tmp/asos_run --two-workers

Prints one JSON object and writes it to ``benchmarks/results/training_speed.json``. The machine
may be shared, so: OpenMP threads wait passively and the plain fits run at the niceness of
Ray's workers (both recorded, with why, in :func:`_passive_openmp` and
:func:`match_ray_niceness`), the fastest of the repeats counts, and the load average at start,
end and after each run is in the JSON: read the seconds with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import torch

from models import item2vec as i2v_fit
from models.item2vec import Item2VecConfig
from models.session.data import build_sessions
from models.two_tower import WEIGHTS, TwoTower
from pipelines import item2vec as i2v
from pipelines import train as tt
from pipelines import two_tower_fit as fit
from recsys.core.catalog import load_item_attributes
from recsys.core.feast_store import open_store
from recsys.core.ray_runtime import ensure_ray, fit_torch, local_cpus, worker_env, worker_threads
from recsys.core.reporting import emit_report
from recsys.core.schema import table_path
from recsys.core.settings import Settings
from recsys.core.sql import parquet, sql_str

log = logging.getLogger("training_speed")
RESULTS = Path(__file__).resolve().parent / "results" / "training_speed.json"
TARGET_RATIO = 1.25  # the bound on Ray wall / plain wall for one worker, all cores


# --------------------------------------------------------------------------- data
def two_tower_data(
    settings: Settings, work: Path, max_examples: int | None = None
) -> dict[str, Any]:
    """The arrays `recsys train` trains on (its calls, up to ``encode_training_set``), their
    fit config, and what :func:`pipelines.train.evaluate` needs to score a fit. All training
    positives are used: the ranker's label carve-out and the cold-item experiment (up to a
    tenth of them) are left aside, so the loop is, if anything, a little longer than `recsys
    train`'s. ``max_examples`` keeps the earliest ones (the file is in time order): at H&M's
    size, a sample gives the per-step cost of its model (105k items) without hours of fits."""
    purchases = tt.load_events(settings, ("purchase",)).drop(columns="event_type")
    split = tt.split_for_training(settings, purchases)
    store = open_store(settings)
    positives = work / tt.POSITIVES
    tt.write_positives(settings, split, positives)
    if max_examples:
        sample = work / f"sample_{tt.POSITIVES}"
        with duckdb.connect() as con:
            con.execute(f"COPY (SELECT * FROM {parquet(positives)} LIMIT {int(max_examples)}) "
                        f"TO {sql_str(sample)} (FORMAT parquet)")  # fmt: skip
        sample.replace(positives)
    examples = tt.training_examples(store, split, positives, settings.train.example_chunk_rows)
    attributes = load_item_attributes(settings)
    arrays = work / tt.ARRAYS
    items, users, counts, model_cfg = tt.encode_training_set(
        settings, examples, tt.positive_users(positives), attributes, arrays
    )
    return {
        "examples": int(counts.sum()),
        "config": tt.fit_config(settings, arrays, model_cfg),
        "model_cfg": model_cfg,
        "evaluate": (store, users, items, attributes, split.train, split.test, split.cutoff),
    }


def item2vec_data(settings: Settings, work: Path, cfg: Item2VecConfig) -> dict[str, Any]:
    """The skip-gram pairs :func:`pipelines.item2vec.fit_item2vec` trains on, in its npz. Its
    cutoff is ``test_days`` before the end of the data; a data root that came with its own
    holdout (ASOS: every event shares one timestamp, so that cutoff would hold out everything)
    trains on all events instead, as the two-tower model does."""
    path = table_path(settings.validated_dir, "interactions")
    holdout = table_path(settings.validated_dir, "holdout").exists()
    cutoff = i2v.event_span(path).default_cutoff(0 if holdout else settings.train.test_days)
    sessions, vocab = build_sessions(path, min_count=cfg.min_count, before=cutoff)
    arrays, threads = work / i2v.PAIRS, worker_threads(settings)
    n, config = i2v_fit.write_pairs(sessions, vocab.counts, cfg, arrays, threads)
    return {"examples": n, "items": vocab.size - 1, "config": config}


# --------------------------------------------------------------------------- timing
def _run(seconds: float, examples: int, epochs: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """Wall seconds, samples/s and where the seconds went for one fit."""
    loop = float(metrics.get("loop_seconds", 0.0))
    return {
        "seconds": round(seconds, 2),
        "samples_per_s": round(examples * epochs / seconds),
        "loop_seconds": round(loop, 2),
        "loop_samples_per_s": round(examples * epochs / loop) if loop else None,
        "setup_seconds": round(float(metrics.get("setup_seconds", 0.0)), 2),
        "loss": round(float(metrics.get("loss", float("nan"))), 5),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def _with_workers(settings: Settings, work: Path, workers: int, threads: int) -> Settings:
    """Settings for a Ray fit: ``workers`` x ``threads``, Ray results under ``work``."""
    train = settings.train.model_copy(update={"num_workers": workers, "cpus_per_worker": threads})
    return settings.model_copy(update={"home": work, "train": train})


def match_ray_niceness() -> dict[str, int]:
    """Give this process (the plain fits) the niceness of Ray's workers, and say what it was:
    Ray starts its workers at niceness 15 (``worker_niceness``). On an idle machine that changes
    nothing; next to other jobs it decides who gets the cores, and a two-thread torch loop that
    loses a core mid-step waits for it, so plain at 0 against Ray at 15 would time the
    scheduler, not the trainer."""
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    before, workers = os.nice(0), ray.get(niceness.remote())
    if workers > before:
        os.nice(workers - before)
    return {"ray_workers": workers, "plain_before": before, "plain": os.nice(0)}


def _noop_train_func(config: dict[str, Any]) -> None:
    """An empty worker: what a ``TorchTrainer`` costs before any of our code runs."""
    import ray.train

    ray.train.report({"ok": 1})


def noop_trainer_seconds(settings: Settings, work: Path, workers: int, threads: int) -> float:
    """Wall seconds of ``TorchTrainer.fit`` with an empty loop: Ray Train's fixed cost."""
    _, _, seconds = fit_torch(
        _with_workers(settings, work, workers, threads), _noop_train_func, {"threads": threads},
        f"noop_{workers}x{threads}", None, storage=work / "ray",
    )  # fmt: skip
    return round(seconds, 2)


def recall_at_10(data: dict[str, Any], state: dict[str, torch.Tensor]) -> float:
    """Recall@10 of a fit on the data root's evaluation split (as `recsys train` scores it)."""
    model = TwoTower(data["model_cfg"])
    model.load_state_dict(state)
    model.eval()
    store, users, items, attributes, train_rows, test_rows, cutoff = data["evaluate"]
    catalog = tt.catalog_frame(store, attributes, items.item_ids, cutoff)
    vectors = tt.item_vectors(model, items, catalog)
    metrics = tt.evaluate(store, model, users, items, vectors, train_rows, test_rows, cutoff)
    return round(metrics["two_tower"]["recall@10"], 5)


def _rounds(
    settings: Settings,
    work: Path,
    args: argparse.Namespace,
    name: str,
    data: dict[str, Any],
    epochs: int,
    extra: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, torch.Tensor]]]:
    """``args.repeats`` rounds of: plain, Ray 1 x all cores (and 2 x 1), then the ``extra`` plain
    fits (kind: config changes), in that order, so that a burst of other work on the machine
    hits every kind. Returns the fastest run of each kind and the weights of its last fit."""
    module, weights = (fit, WEIGHTS) if name == "two_tower" else (i2v_fit, i2v_fit.WEIGHTS)
    config, n = data["config"], data["examples"]
    threads = config["threads"]
    shapes = [(1, threads)] + ([(2, 1)] if args.two_workers else [])
    fits = [("plain", config, None)]
    fits += [(f"ray_{w}x{t}", config | {"threads": t}, (w, t)) for w, t in shapes]
    fits += [(kind, config | change, None) for kind, change in extra.items()]
    runs: dict[str, list[dict[str, Any]]] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for round_ in range(args.repeats):
        log.info("%s round %d/%d (%d thread(s))", name, round_ + 1, args.repeats, threads)
        for kind, kind_config, shape in fits:
            if shape is None:  # plain PyTorch in this process
                t0 = time.perf_counter()
                states[kind], metrics = module.train_plain(kind_config)
                seconds = time.perf_counter() - t0
            else:  # the seconds of ``TorchTrainer.fit``; the metrics of rank 0's loop
                ray_settings = _with_workers(settings, work, *shape)
                states[kind], metrics, seconds = fit_torch(
                    ray_settings, module.train_func, kind_config, f"{name}_bench_{kind}", weights
                )
            runs.setdefault(kind, []).append(_run(seconds, n, epochs, metrics))
            log.info("  %s: %.1fs", kind, seconds)
    return _best_runs(runs, states, threads), states


def _best_runs(
    runs: dict[str, list[dict[str, Any]]], states: dict[str, dict[str, torch.Tensor]], threads: int
) -> dict[str, dict[str, Any]]:
    """The fastest round of each kind (the least disturbed by other work, with every time),
    each Ray kind's cost over the plain fit, and how far the one-worker Ray fit's weights are
    from the plain fit's (the same loop: they should agree)."""
    best = {}
    for name, rounds in runs.items():
        best[name] = dict(min(rounds, key=lambda r: r["seconds"]))
        if len(rounds) > 1:
            best[name]["all_seconds"] = [r["seconds"] for r in rounds]
    plain = best["plain"]
    for ray in (run for name, run in best.items() if name.startswith("ray_")):
        ray["overhead_seconds"] = round(ray["seconds"] - plain["seconds"], 2)
        ray["ratio_to_plain"] = round(ray["seconds"] / plain["seconds"], 3)
        # wall minus our setup (arrays, model, DDP) and loop: worker start-up, checkpoint, teardown
        outside = ray["seconds"] - ray["loop_seconds"] - ray["setup_seconds"]
        ray["outside_loop_seconds"] = round(outside, 2)
    a, b = states["plain"], states[f"ray_1x{threads}"]
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    best[f"ray_1x{threads}"]["weights_max_abs_diff_to_plain"] = diff
    return best


def bench_two_tower(settings: Settings, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Plain, Ray 1 x all cores (and 2 x 1), plain with dense id tables (:func:`_rounds`)."""
    started = time.perf_counter()
    data = two_tower_data(settings, work, args.max_examples)
    config, n = data["config"], data["examples"]
    epochs, threads = config["epochs"], config["threads"]
    log.info("two-tower: %d examples, %d epochs (%.1fs to build the arrays)",
             n, epochs, time.perf_counter() - started)  # fmt: skip
    other = "plain_dense" if fit.SPARSE_ID_TABLES else "plain_sparse"  # the road not taken
    extra = {} if args.no_sparse else {other: {"sparse": not fit.SPARSE_ID_TABLES}}
    best, states = _rounds(settings, work, args, "two_tower", data, epochs, extra)
    out: dict[str, Any] = {"examples": n, "epochs": epochs, "batch_size": config["batch_size"]}
    out |= {"max_examples": args.max_examples} if args.max_examples else {}
    out |= {"threads": threads, "runs": best}
    if not args.no_sparse:
        log.info("two-tower: scoring the sparse and the dense fit (recall@10)")
        sparse, dense = ("plain", other) if fit.SPARSE_ID_TABLES else (other, "plain")
        out["sparse"] = {
            "default": fit.SPARSE_ID_TABLES,
            "loop_speedup": round(best[dense]["loop_seconds"] / best[sparse]["loop_seconds"], 3),
            "recall@10_dense": recall_at_10(data, states[dense]),
            "recall@10_sparse": recall_at_10(data, states[sparse]),
        }
    return out


def bench_item2vec(settings: Settings, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Plain, Ray 1 x all cores (and 2 x 1) (:func:`_rounds`)."""
    cfg = Item2VecConfig()
    started = time.perf_counter()
    data = item2vec_data(settings, work, cfg)
    n = data["examples"]
    log.info("item2vec: %d pairs over %d items, %d epochs (%.1fs to build them)",
             n, data["items"], cfg.epochs, time.perf_counter() - started)  # fmt: skip
    best, _ = _rounds(settings, work, args, "item2vec", data, cfg.epochs, {})
    out: dict[str, Any] = {"examples": n, "items": data["items"], "epochs": cfg.epochs}
    out |= {"batch_size": cfg.batch_size, "threads": data["config"]["threads"], "runs": best}
    out["sparse"] = "always: Item2Vec's tables have sparse gradients and SparseAdam"
    return out


def _passive_openmp() -> None:
    """Re-run this script with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller chose a policy:
    torch's OpenMP threads spin while they wait for each other. On 2 cores shared with other
    jobs a spinning thread burns the slice its sibling needs, and an epoch measured here went
    from 5-15 s to ~200 s, plain and Ray alike. Passive waiting keeps the comparison about
    Ray. The policy is read when torch loads, hence a new process; Ray's workers inherit it.
    Pass ``OMP_WAIT_POLICY=ACTIVE`` to time torch's default."""
    if "OMP_WAIT_POLICY" not in os.environ:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    _passive_openmp()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="data root (default RECSYS_HOME)")
    parser.add_argument("--models", nargs="+", default=["two_tower", "item2vec"])
    parser.add_argument("--two-workers", action="store_true", help="also 2 workers x 1 core")
    parser.add_argument("--no-sparse", action="store_true", help="skip the sparse comparison")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the fastest counts")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="two-tower: train on the earliest N examples only")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="also write the JSON here")
    args = parser.parse_args()
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False)  # stdout: the JSON
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler])
    logging.getLogger("feast").setLevel(logging.WARNING)  # "Registry cache expired", per call
    settings = Settings(home=args.home) if args.home else Settings()
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(("RAY_TRAIN_", "OMP_", "RECSYS_"))}
    report: dict[str, Any] = {
        "benchmark": "training_speed",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "home": str(settings.home),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "env": env,
        "ray_worker_env": worker_env(settings),
        "repeats": args.repeats,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "target_ratio": TARGET_RATIO,
    }
    with tempfile.TemporaryDirectory(prefix="training_speed_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ensure_ray(settings)  # once per process, as `recsys train` pays it once
        report["ray_init_seconds"] = round(time.perf_counter() - t0, 2)
        report["niceness"] = match_ray_niceness()
        threads = max(1, local_cpus(settings))
        noop = {f"1x{threads}": noop_trainer_seconds(settings, work, 1, threads)}
        if args.two_workers:
            noop["2x1"] = noop_trainer_seconds(settings, work, 2, 1)
        report["ray_empty_trainer_seconds"] = noop
        log.info("Ray: init %.1fs, empty TorchTrainer %s", report["ray_init_seconds"], noop)
        if "two_tower" in args.models:
            report["two_tower"] = bench_two_tower(settings, work, args)
        if "item2vec" in args.models:
            report["item2vec"] = bench_item2vec(settings, work, args)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = {}
    for model in ("two_tower", "item2vec"):
        if model in report:
            ratio = report[model]["runs"][f"ray_1x{report[model]['threads']}"]["ratio_to_plain"]
            summary[model] = {"ratio_ray_1_worker": ratio, "meets_target": ratio <= TARGET_RATIO}
    report["summary"] = summary
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
