"""Per-source ablation of the session pipeline on the next-item protocol.

For a data root where `recsys train` has run (the served run gives the cutoff, the vocabulary
and the catalogue), the session pipeline is fitted again (`pipelines/session_training.py`:
sources on the older sessions, the ranker on the newest ones, sources refitted on all) once
with every default source and once without each of them (leave one out), plus once with the
GRU4Rec source added; each variant is scored on the held-out sessions exactly as `recsys
evaluate --task next-item` scores the served one (HR@20 / MRR@20 over every next-item event).
A source earns its place when leaving it out costs MRR@20.

    .venv/bin/python benchmarks/session_ablation.py --home /work/sess_demo \\
        --out benchmarks/results/session_ablation_demo.json

Prints one JSON object (and writes it to ``--out``); a line per variant goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from models.candidates import CATALOG
from models.served_pipeline import SESSION_PIPELINE, ServedPipeline
from models.session.protocol import evaluate
from models.sources import enabled_sources
from models.two_tower import load_two_tower
from pipelines.next_item_eval import next_item_split, served_scorer
from pipelines.session_training import fit_session_pipeline
from pipelines.train import load_events
from recsys.core.reporting import emit_report
from recsys.core.run import Run
from recsys.core.schema import table_path
from recsys.core.settings import Settings

K = 20


def variant_settings(settings: Settings, off: str | None, on: str | None) -> Settings:
    """``settings`` with source ``off`` disabled and source ``on`` enabled."""
    sources = settings.sources.model_copy(deep=True)
    for name, enabled in ((off, False), (on, True)):
        if name is not None:
            entry = getattr(sources, name).model_copy(update={"enabled": enabled})
            setattr(sources, name, entry)
    return settings.model_copy(update={"sources": sources})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="A trained data root.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    parser.add_argument("--only", nargs="*", default=None, help="Variants to run (names).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(home=args.home)
    run = Run.current(settings.artifacts_dir)
    _, _, items = load_two_tower(run)
    cutoff = pd.Timestamp(run.manifest["data"]["cutoff"])
    signal = run.manifest["data"].get("signal", "purchase")
    catalog = run.sub(SESSION_PIPELINE).read_table(CATALOG)
    interactions = table_path(settings.validated_dir, "interactions")
    signal_rows = load_events(settings, (signal,))
    signal_rows = signal_rows[signal_rows["timestamp"] < cutoff]
    _, heldout, cases = next_item_split(settings, items.vocab, cutoff)

    defaults = [cls.name for cls, _ in enabled_sources(settings, "session")]
    variants: dict[str, tuple[str | None, str | None]] = {"all": (None, None)}
    variants |= {f"without {name}": (name, None) for name in defaults}
    variants["with gru4rec"] = (None, "gru4rec")
    if args.only:
        variants = {n: v for n, v in variants.items() if n in args.only}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (off, on) in variants.items():
            started = time.perf_counter()
            chosen = variant_settings(settings, off, on)
            out = Run(Path(tmp) / name.replace(" ", "_"))
            block = fit_session_pipeline(chosen, interactions, signal_rows, items.vocab,
                                         catalog, cutoff, out, progress=lambda _: None)  # fmt: skip
            fit_seconds = time.perf_counter() - started
            pipeline = ServedPipeline.load_session(out, chosen, items.vocab)
            assert block is not None and pipeline is not None
            t0 = time.perf_counter()
            metrics = evaluate(served_scorer(pipeline, K), cases, K)
            results[name] = {
                **metrics,
                "sources": [s.name for s in pipeline.generator.sources],
                "fit_seconds": round(fit_seconds, 1),
                "eval_seconds": round(time.perf_counter() - t0, 1),
                "ranker_valid_ndcg@10": block["ranker"]["valid_ndcg@10_vs_sources"],
            }
            print(f"{name}: HR@{K} {metrics[f'hr@{K}']:.4f} MRR@{K} {metrics[f'mrr@{K}']:.4f}",
                  file=sys.stderr, flush=True)  # progress; stdout is the JSON  # fmt: skip
    base = results.get("all", {}).get(f"mrr@{K}")
    if base:
        for entry in results.values():
            entry[f"mrr@{K}_vs_all"] = round(entry[f"mrr@{K}"] / base, 4)
    emit_report({
        "benchmark": "session_ablation",
        "created_at": datetime.now(UTC).isoformat(),
        "home": str(args.home),
        "run": run.id,
        "cutoff": str(cutoff),
        "heldout_sessions": len(heldout),
        "events": cases.events,
        "variants": results,
    }, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
