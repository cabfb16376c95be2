"""``recsys``: one subcommand per pipeline stage, each idempotent and re-runnable.

Stages read and write under the data root (``RECSYS_HOME``, default ``var/`` in the checkout),
in the order raw -> validated -> features -> feature store -> model -> index -> API.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.logging import RichHandler

from recsys.core.ray_runtime import ray_wanted
from recsys.core.settings import Settings, get_settings
from recsys.core.sql import parquet
from recsys.core.terminal import console, quiet_libraries
from recsys.core.terminal import table as _table

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Create or import data sets.")
app.add_typer(data_app, name="data")


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Feature-store-backed fashion recommendations: Feast, PyTorch, Ray, Qdrant, FastAPI."""
    quiet_libraries(get_settings().home / "logs", verbose)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for name in ("recsys", "pipelines", "models", "serving"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@contextmanager
def stage(name: str, *expected: type[Exception]) -> Iterator[None]:
    """Print a stage header and its wall time; ``expected`` errors (a missing input, bad data)
    stop with a readable message instead of a traceback."""
    console.rule(f"[bold]{name}")
    started = time.perf_counter()
    try:
        yield
    except expected as exc:
        raise _fail(exc) from exc
    console.print(f"[green]✓ {name}[/] in {time.perf_counter() - started:.1f}s")


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {exc}")
    return typer.Exit(code=1)


# --------------------------------------------------------------------------- stages
def run_synth(settings: Settings, users: int, items: int, days: int, seed: int,
              end_date: date | None,
              event_types: tuple[str, ...] | None = None) -> None:  # fmt: skip
    """Generate the shop; ``event_types`` (None: all) keeps a subset, e.g. ``("view",)`` for a
    click-only shop. Bad sizes or event names stop with the generator's message."""
    from pipelines.synth import generate
    from recsys.core.schema import EVENT_TYPES

    with stage("data synth", ValueError):
        kinds = EVENT_TYPES if event_types is None else event_types
        s = generate(settings.raw_dir, users, items, days, seed, end_date, event_types=kinds)
        console.print(
            f"  {s.interactions:,} interactions ({s.purchases:,} purchases) from {s.users:,} users "
            f"on {s.items:,} items, {s.start:%Y-%m-%d} to {s.end:%Y-%m-%d} -> {s.out_dir}"
        )


def run_import(settings: Settings, fmt: str, path: Path | None, options: dict[str, Any]) -> None:
    """Import a data set, then let it replace the current one under the data root.

    The adapter writes into a staging folder first, so a bad mapping or a broken file fails
    without touching the data set (and features, Feast state) that is there now.
    """
    from pipelines.adapters import DatasetImportError, get_adapter, replace_dataset
    from pipelines.adapters.base import rejected_dir
    from pipelines.validate import DataValidationError

    with stage(f"data import {fmt}"):
        staging = settings.data_dir / "raw.importing"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = get_adapter(fmt).import_dataset(staging, path=path, **options)
            removed = replace_dataset(settings, staged=staging)
        except DataValidationError as exc:
            console.print(f"[red]error:[/] {exc}")
            console.print(
                f"  the import failed validation: the working data set is unchanged; the "
                f"rejected tables' quarantine and report are in {rejected_dir(settings)}"
            )
            raise typer.Exit(code=1) from exc
        except (DatasetImportError, OSError) as exc:
            raise _fail(exc) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        table = _table(f"{summary.format} -> {settings.raw_dir}", "table", "rows")
        for name, rows in summary.counts.items():
            table.add_row(name, f"{rows:,}")
        console.print(table)
        for note in summary.notes:
            console.print(f"  - {note}")
        if removed:
            console.print(
                f"  replaced the previous data set (cleared {', '.join(p.name for p in removed)};"
                " model runs kept)"
            )
        console.print(
            "  next: recsys validate && recsys features && recsys materialize && recsys train"
        )


def run_validate(settings: Settings, max_bad_fraction: float) -> None:
    from pipelines.validate import DataValidationError, print_summary, validate_dataset

    with stage("validate", DataValidationError, FileNotFoundError):
        result = validate_dataset(settings.raw_dir, settings.validated_dir,
                                  settings.quarantine_dir, settings.reports_dir,
                                  max_bad_fraction=max_bad_fraction,
                                  memory_limit=settings.validation.memory_limit,
                                  gx_chunk_rows=settings.validation.gx_chunk_rows)  # fmt: skip
        print_summary(result, console)


def run_features(settings: Settings) -> None:
    from pipelines.features import ShardRunner, compute_features
    from recsys.core.signal import signal_event

    with stage("features", FileNotFoundError, ValueError):
        signal = signal_event(settings)
        runner: ShardRunner | None = None
        if settings.features.engine == "ray":
            from pipelines.features_ray import RayShards

            runner = RayShards(settings)
        s = compute_features(settings.validated_dir, settings.features_dir,
                             settings.features.purchased_items_cap,
                             memory_limit=settings.features.duckdb_memory_limit,
                             signal=signal, runner=runner)  # fmt: skip
        how = {
            "full": "computed every day",
            "incremental": f"computed only the days after {s.since}",
            "current": "snapshots already up to date",
        }[s.mode]
        console.print(f"  {how}; histories of {signal} events")
        if s.engine != "duckdb":
            console.print(f"  on {s.engine}: {s.shards} shards per entity, on {s.nodes} node(s)")
        console.print(
            f"  user snapshots {s.user_rows:,}, item snapshots {s.item_rows:,}, "
            f"item attributes {s.attribute_rows:,}, user activity {s.activity_rows:,} "
            f"-> {s.out_dir}"
        )


def run_materialize(settings: Settings) -> None:
    from pipelines.materialize import materialize

    with stage("materialize (feast apply + materialize)"):
        s = materialize(settings)
        rows = sum(s.feature_views.values())
        console.print(
            f"  {rows:,} rows from {len(s.feature_views)} feature views into the online store "
            f"({rows / max(s.seconds, 1e-9):,.0f} rows/s), up to {s.end:%Y-%m-%d %H:%M} UTC"
        )


def run_embed(
    settings: Settings,
    kind: Literal["text", "image"] = "text",
    model_path: Path | None = None,
    use_ray: bool | None = None,
    batch_size: int = 64,
) -> None:
    """Embed the validated catalogue where ``recsys train`` looks for it; only edits re-encode."""
    from models.text_encoder import ModelFolderError
    from pipelines.embed import embed_items
    from recsys.core.schema import table_path

    items_path = table_path(settings.validated_dir, "items")
    expected = (ModelFolderError, FileNotFoundError, ValueError, ImportError)
    use_ray = ray_wanted(settings, use_ray)
    with stage(f"embed {kind} ({'Ray Data' if use_ray else 'in-process'})", *expected):
        if not items_path.exists():
            raise FileNotFoundError(f"{items_path} is missing: run `recsys validate` first.")
        s = embed_items(items_path, settings.item_embeddings_path(kind),
                        settings.embeddings_cache_dir, kind=kind, model_path=model_path,
                        use_ray=use_ray, batch_size=batch_size, settings=settings)  # fmt: skip
        console.print(
            f"  {s.items:,} items: {s.hits:,} cached, {s.encoded:,} encoded ({s.backend}, "
            f"{s.precision}, {s.encode_seconds:.1f}s), dim {s.dim} -> {s.out_path}"
        )


def run_train(settings: Settings) -> dict[str, Any]:
    from pipelines.train import train

    where = "Ray Train" if ray_wanted(settings) else "in-process"
    with stage(f"train (two-tower, {where})", FileNotFoundError, ValueError):
        result = train(settings, progress=console.print)
        m = result.metrics
        recall, ndcg = f"recall@{m['k']}", f"ndcg@{m['k']}"
        title = f"held-out window from {m['cutoff'][:10]} ({m['two_tower']['users']:,} users)"
        table = _table(title, "model", recall, ndcg)
        for name in ("two_tower", "popularity", "popularity_recent"):
            table.add_row(name, f"{m[name][recall]:.4f}", f"{m[name][ndcg]:.4f}")
        console.print(table)
        best_pop = max(m["popularity"][recall], m["popularity_recent"][recall])
        lift = m["two_tower"][recall] / max(best_pop, 1e-12)
        console.print(f"  two-tower / best popularity {recall}: [bold]{lift:.2f}x[/]")
        cold = m.get("cold_items")
        if cold and cold.get("users"):
            k = m["k"]
            console.print(
                f"  cold-start items ({cold['items']} never trained on, {cold['users']} users): "
                f"recall@{k} {cold[f'recall@{k}_among_cold']:.3f} among them vs "
                f"{cold[f'random@{k}_among_cold']:.3f} at random; "
                f"{cold[f'recall@{k}_catalogue']:.3f} in the whole catalogue vs "
                f"{cold[f'random@{k}_catalogue']:.3f}"
            )
        console.print(f"  run saved to {result.run_dir}")
        return m


def run_item2vec(
    settings: Settings, use_ray: bool | None = None, cutoff: str | None = None
) -> dict:
    """Train item2vec on the validated sessions and score next-item prediction on the
    sessions after the cutoff, against co-occurrence and popularity."""
    from pipelines.item2vec import fit_item2vec

    use_ray = ray_wanted(settings, use_ray)
    backend = "Ray Train" if use_ray else "in-process"
    with stage(f"item2vec (skip-gram over sessions, {backend})", FileNotFoundError, ValueError):
        result = fit_item2vec(settings, cutoff=cutoff, use_ray=use_ray)
        m = result.metrics
        k = m["k"]
        table = _table(f"next item in {m['heldout_sessions']:,} held-out sessions "
                       f"({m['steps']:,} steps, after {m['cutoff'][:10]})",
                       "model", f"HR@{k}", f"MRR@{k}")  # fmt: skip
        for name in ("item2vec", "cooccurrence", "popularity"):
            table.add_row(name, f"{m[name][f'hr@{k}']:.4f}", f"{m[name][f'mrr@{k}']:.4f}")
        console.print(table)
        fit = m["fit"]
        console.print(
            f"  {m['pairs']:,} pairs over {m['items']:,} items, {result.run.config.epochs} epochs "
            f"({fit['backend']}, {fit['seconds']:.1f}s); random HR@{k} {m['random_hr']:.4f}"
        )
        console.print(f"  saved to {result.out_dir}")
        return m


def run_evaluate(
    settings: Settings,
    holdout: Path | None,
    split: str | None,
    test_fraction: float | None,
    json_path: Path | None,
    tune: bool,
) -> dict[str, Any]:
    """Tune and score the classic peers on one protocol; print a table, write the report."""
    import json as json_lib

    from pipelines.evaluate import evaluate as evaluate_peers

    header = "evaluate (popularity, item-kNN, ALS, EASE, local EASE, the served pipeline)"
    with stage(header, FileNotFoundError, ValueError):
        result = evaluate_peers(settings, holdout=holdout, split=split,  # type: ignore[arg-type]
                                test_fraction=test_fraction, tune=tune,
                                progress=console.print)  # fmt: skip
        d = result["dataset"]
        table = _table(f"{result['protocol']['split']} split: {d['eval_users']:,} users "
                       f"({d['cold_test_users']:,} cold), {d['train_items']:,} items",
                       "model", "R@10", "NDCG@10", "MAP@12", "R@100", "cov@10",
                       "cold-u R@10", "cold-i R@10", "fit s")  # fmt: skip
        metrics = ("recall@10", "ndcg@10", "map@12", "recall@100", "coverage@10")
        rows = dict(result["models"])
        if result.get("served") is not None:
            rows["[bold]served pipeline[/]"] = {"params": {}, **result["served"]}
        for name, m in rows.items():
            if "overall" not in m:
                table.add_row(name, f"[red]{m.get('error', 'failed')}[/]")
                continue
            cells = [f"{m['overall'][c]:.4f}" if c in m["overall"] else "-" for c in metrics]
            cells += [f"{m[s]['recall@10']:.4f}" if m.get(s) else "-"
                      for s in ("cold_users", "cold_items")]  # fmt: skip
            fit = f"{m['fit_seconds']:.1f}" if "fit_seconds" in m else "-"
            table.add_row(name, *cells, fit)
        console.print(table)
        alone = (result.get("served") or {}).get("sources_alone")
        if alone:
            best = max(alone, key=lambda n: alone[n].get("ndcg@10", 0.0))
            served = result["served"]["overall"]
            console.print(
                f"  served ranker NDCG@10 {served['ndcg@10']:.4f} vs the best single source "
                f"({best}) {alone[best]['ndcg@10']:.4f}: "
                f"{served['ndcg@10'] / max(alone[best]['ndcg@10'], 1e-12):.2f}x"
            )
        for name, m in rows.items():  # the parameters each tuned model chose
            if "overall" in m and m["params"]:
                console.print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in m["params"].items()))
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json_lib.dumps(result, indent=2, default=str))
            console.print(f"  JSON -> {json_path}")
        report_dir = settings.reports_dir / "evaluation"
        console.print(f"  report -> {report_dir / 'report.md'}")
        console.print(f"  HTML report -> {report_dir / 'report.html'}")
        return result


def run_evaluate_next_item(settings: Settings, json_path: Path | None, tune: bool) -> dict:
    """Next-item HR/MRR@20 of the served session pipeline, its sources and the tuned peers."""
    import json as json_lib

    from pipelines.next_item_eval import evaluate_next_item

    with stage("evaluate next item (session-rec protocol)", FileNotFoundError, ValueError):
        result = evaluate_next_item(settings, tune_peers=tune, progress=console.print)
        k, d = result["k"], result["dataset"]
        table = _table(f"next item: {d['events']:,} events of {d['heldout_sessions']:,} held-out "
                       "sessions", "model", f"HR@{k}", f"MRR@{k}")  # fmt: skip
        rows = {**result["models"],
                **{f"{n} (source)": m for n, m in result["served"]["sources_alone"].items()},
                "[bold]served session pipeline[/]": result["served"]}  # fmt: skip
        for name, m in rows.items():
            table.add_row(name, f"{m[f'hr@{k}']:.4f}", f"{m[f'mrr@{k}']:.4f}")
        console.print(table)
        served = result["served"]
        console.print(f"  served / best peer ({served['best_peer']}): MRR@{k} "
                      f"{served[f'mrr@{k}_vs_best_peer']:.2f}x, HR@{k} "
                      f"{served[f'hr@{k}_vs_best_peer']:.2f}x")  # fmt: skip
        for name, m in result["models"].items():
            if m.get("params"):
                console.print(f"  {name}: " + ", ".join(f"{a}={b}" for a, b in m["params"].items()))
        out = json_path or settings.reports_dir / "evaluation" / "next_item.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json_lib.dumps(result, indent=2, default=str))
        console.print(f"  JSON -> {out}")
        return result


def run_index(settings: Settings) -> None:
    from pipelines.index import build_index

    with stage(f"index ({settings.vector_store.type} vector store)"):
        s = build_index(settings)
        h = s.health
        where = h.get("path") or h.get("url") or ""
        console.print(
            f"  {s.points:,} item vectors (dim {s.dim}) of model run {s.run_dir.name} -> "
            f"collection {h.get('collection')} (alias {h.get('alias')}, "
            f"{h.get('indexed_vectors', 0):,} indexed) {where}",
            highlight=False,
        )


def run_rollback(settings: Settings, to: str | None) -> None:
    """Point the vector store alias back, and ``artifacts/current`` at the matching model run.

    The API must serve the model whose item vectors are in the collection, so the run id
    recorded with the collection decides which model run becomes current again.
    """
    from recsys.core.run import Run
    from recsys.core.vectorstore import VectorStoreError, open_vector_store

    alias = settings.vector_store.collection
    with stage(f"rollback ({settings.vector_store.type} vector store)"):
        store = open_vector_store(settings.vector_store, settings.home)
        try:
            old, new = store.rollback(alias, to)
            old_run, new_run = store.run_id_of(old), store.run_id_of(new)
        except VectorStoreError as exc:
            raise _fail(exc) from exc
        finally:
            store.close()
        console.print(
            f"  {alias}: {old} (model run {old_run or 'unknown'}) -> {new} "
            f"(model run {new_run or 'unknown'})"
        )
        run_dir = settings.artifacts_dir / new_run if new_run else None
        if run_dir is not None and run_dir.is_dir():
            Run(run_dir).set_current()
            console.print(f"  artifacts/current -> {new_run}: serve this model with {new}")
        else:
            console.print(
                f"  [yellow]no model run folder for {new} under {settings.artifacts_dir}[/]: "
                "artifacts/current is unchanged; make sure the API serves the model that "
                f"built {new}"
            )


def run_serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from serving.app import create_app
    from serving.metrics import worker_metrics_dir
    from serving.security import check_exposure

    try:
        check_exposure(settings.serve, host)
    except ValueError as exc:
        raise _fail(exc) from exc
    console.rule("[bold]serve")
    workers = settings.serve.workers
    console.print(f"  API on http://{host}:{port}  (docs: http://{host}:{port}/docs), "
                  f"{workers} worker(s)")  # fmt: skip
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    # several processes: each builds its own app (settings from the same environment) and
    # serves from its own read-only copy of the index; each counts its metrics into a file of
    # one fresh directory, which /metrics adds up (the workers are spawned, not forked, so
    # their prometheus_client is imported after the directory is named)
    os.environ["RECSYS_HOME"] = str(settings.home)
    with worker_metrics_dir():
        uvicorn.run("serving.app:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")  # fmt: skip


# --------------------------------------------------------------------------- commands
@data_app.command("synth")
def data_synth(
    users: Annotated[int, typer.Option(help="Number of shoppers.")] = get_settings().synth.users,
    items: Annotated[int, typer.Option(help="Catalogue size.")] = get_settings().synth.items,
    days: Annotated[int, typer.Option(help="Days of history.")] = get_settings().synth.days,
    seed: Annotated[int, typer.Option(help="Random seed.")] = get_settings().synth.seed,
    end_date: Annotated[
        str | None, typer.Option(help="Day after the last event, YYYY-MM-DD (default: today).")
    ] = get_settings().synth.end_date,
    events: Annotated[
        str,
        typer.Option(
            help="Event types to write, comma-separated, of view, add_to_cart, purchase "
            "(a click-only shop: view)."
        ),
    ] = "view,add_to_cart,purchase",
) -> None:
    """Generate a synthetic fashion shop (catalogue, shoppers, sessions) as canonical Parquet."""
    kinds = tuple(name.strip() for name in events.split(",") if name.strip())
    run_synth(get_settings(), users, items, days, seed, _parse_date(end_date), kinds)


@data_app.command("import")
def data_import(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="generic, hm, movielens or asos.")],
    path: Annotated[
        Path | None,
        typer.Argument(metavar="DIR", help="The data set's folder (hm, movielens, asos)."),
    ] = None,
    interactions: Annotated[
        Path | None, typer.Option(help="generic: events file, CSV or Parquet.")
    ] = None,
    items: Annotated[Path | None, typer.Option(help="generic: catalogue file.")] = None,
    users: Annotated[Path | None, typer.Option(help="generic: users file.")] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="generic: events held out for evaluation.")
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option("--map", help="generic: canonical=source columns, e.g. user_id=customer_id."),
    ] = None,
    event_type: Annotated[
        str | None, typer.Option(help="generic: event type of every row (no event column).")
    ] = None,
    event_map: Annotated[
        str | None, typer.Option(help="generic: canonical=source event values, e.g. view=click.")
    ] = None,
    timestamp_format: Annotated[
        str | None, typer.Option(help="generic: DuckDB strptime format, e.g. '%Y-%m-%d'.")
    ] = None,
    timestamp_unit: Annotated[
        str | None, typer.Option(help="generic: epoch numbers in s, ms or us.")
    ] = None,
    holdout_days: Annotated[
        int | None, typer.Option(help="hm: move the last N days to the holdout.")
    ] = None,
    reference_time: Annotated[
        str | None, typer.Option(help="asos: timestamp of the train pairs (ISO-8601).")
    ] = None,
) -> None:
    """Import a data set (replaces the current one; model runs are kept)."""
    # every option but the format and folder, under the adapters' names (None: not given)
    options = {k: v for k, v in locals().items() if k not in ("fmt", "path", "mapping")}
    run_import(get_settings(), fmt, path, {**options, "map": mapping})


@app.command()
def validate(
    max_bad_fraction: Annotated[
        float, typer.Option(help="Share of bad rows per table above which the run fails.")
    ] = get_settings().validation.max_bad_fraction,
) -> None:
    """Check raw tables with Great Expectations; quarantine bad rows; write the HTML report."""
    run_validate(get_settings(), max_bad_fraction)


@app.command()
def features(
    engine: Annotated[
        str | None,
        typer.Option(
            help="duckdb (one process) or ray (the same queries over user and item shards as "
            "Ray tasks: RAY_ADDRESS's cluster, else a local Ray). Default: "
            "RECSYS_FEATURES__ENGINE, else duckdb."
        ),
    ] = None,
) -> None:
    """Compute daily user and item feature snapshots with DuckDB (on Ray: by entity shards)."""
    if engine not in (None, "duckdb", "ray"):
        raise typer.BadParameter(f"{engine!r}: give duckdb or ray", param_hint="--engine")
    run_features(_override(get_settings(), "features", engine=engine))


@app.command()
def materialize(
    engine: Annotated[
        str | None,
        typer.Option(
            help="local (Feast's engine, in this process) or ray (key shards of each view "
            "loaded by Ray tasks). Default: RECSYS_FEAST__MATERIALIZE_ENGINE, else local."
        ),
    ] = None,
) -> None:
    """Register the Feast repo and load the latest features into the online store."""
    if engine not in (None, "local", "ray"):
        raise typer.BadParameter(f"{engine!r}: give local or ray", param_hint="--engine")
    run_materialize(_override(get_settings(), "feast", materialize_engine=engine))


@app.command()
def embed(
    kind: Annotated[str, typer.Option(help="text or image.")] = "text",
    model_path: Annotated[
        Path | None,
        typer.Option(
            help="Local Hugging Face model folder (default: RECSYS_EMBED__TEXT_MODEL_PATH, "
            "else the bundled all-MiniLM-L6-v2; image needs a CLIP folder)."
        ),
    ] = None,
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Encode with Ray Data, or in this process "
            "(default: RECSYS_RAY__USE; auto takes Ray on a cluster).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Inputs per forward pass.")] = 64,
) -> None:
    """Embed item text (title, description, attributes) or images; cached by content hash."""
    if kind not in ("text", "image"):
        raise typer.BadParameter(f"{kind!r} is not text or image", param_hint="--kind")
    run_embed(get_settings(), cast(Literal["text", "image"], kind), model_path, ray, batch_size)


@app.command()
def train(
    epochs: Annotated[int | None, typer.Option(help="Override RECSYS_TRAIN__EPOCHS.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Ray Train workers.")] = None,
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Fit through Ray Train, or in this process "
            "(default: RECSYS_RAY__USE; auto takes Ray on a cluster or with >1 worker).",
        ),
    ] = None,
) -> None:
    """Train the two-tower model (and the served pipelines) and compare it with popularity."""
    settings = _override(get_settings(), "train", epochs=epochs, num_workers=num_workers)
    use = None if ray is None else ("always" if ray else "never")
    run_train(_override(settings, "ray", use=use))


@app.command()
def item2vec(
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Train through Ray Train, or in this process "
            "(default: RECSYS_RAY__USE; auto takes Ray on a cluster).",
        ),
    ] = None,
    cutoff: Annotated[
        str | None,
        typer.Option(
            help="Sessions from this time on are held out (default: the last "
            "RECSYS_TRAIN__TEST_DAYS days)."
        ),
    ] = None,
) -> None:
    """Train item2vec over shopping sessions and evaluate next-item prediction (HR/MRR@20)."""
    run_item2vec(get_settings(), ray, cutoff)


@app.command()
def evaluate(
    holdout: Annotated[
        Path | None, typer.Option(help="Test events (Parquet); default validated/holdout.")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="holdout or temporal (default: holdout if present).")
    ] = None,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            help="temporal: last share of time held out (default: the served run's "
            "cutoff, else 0.1)."
        ),
    ] = None,
    json: Annotated[Path | None, typer.Option(help="Also write the results JSON here.")] = None,
    tune: Annotated[
        bool, typer.Option("--tune/--no-tune", help="Tune on a slice of the training data.")
    ] = True,
    task: Annotated[
        str,
        typer.Option(
            help="user: a shopper's next purchases (popularity, item-kNN, ALS, EASE, local "
            "EASE, the served pipeline); next-item: the next click of held-out sessions "
            "(popularity, co-occurrence, SR, V-SkNN, the served session pipeline)."
        ),
    ] = "user",
) -> None:
    """Score the served pipeline against tuned peers with one protocol per task."""
    if task == "next-item":
        run_evaluate_next_item(get_settings(), json, tune)
    elif task == "user":
        run_evaluate(get_settings(), holdout, split, test_fraction, json, tune)
    else:
        raise _fail(ValueError(f"--task must be 'user' or 'next-item', got {task!r}"))


@app.command()
def index() -> None:
    """Upsert the current model's item vectors into the vector store."""
    run_index(get_settings())


@app.command()
def rollback(
    to: Annotated[
        str | None,
        typer.Option(help="Collection to point the alias at (default: the previous one)."),
    ] = None,
) -> None:
    """Point the vector store alias back at the previous collection (and its model run)."""
    run_rollback(get_settings(), to)


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = get_settings().serve.host,
    port: Annotated[int, typer.Option()] = get_settings().serve.port,
    workers: Annotated[
        int | None, typer.Option(min=1, help="uvicorn worker processes (default: settings).")
    ] = None,
) -> None:
    """Start the recommendation API."""
    run_serve(_override(get_settings(), "serve", workers=workers), host, port)


@app.command("api-key")
def api_key(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. the shop's backend.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read, write, admin.")
    ] = "read,write",
) -> None:
    """Make an API key: print it once, and the settings entry that lets it in (its hash)."""
    from recsys.core.settings import ApiKey
    from serving.security import new_key

    key, digest = new_key()
    try:
        stored = ApiKey(sha256=digest, scopes=frozenset(s.strip() for s in scopes.split(",")))
    except ValueError as exc:  # an unknown scope: the key is never shown
        raise _fail(exc) from exc
    entry = {name: {"sha256": stored.sha256, "scopes": sorted(stored.scopes)}}
    console.print(f"key for {name!r} (shown once; give it to the client):\n{key}")
    console.print("add to RECSYS_SERVE__API_KEYS (a JSON object of every client's entry):")
    print(json.dumps(entry))


@app.command()
def demo(
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the API at the end.")
    ] = True,
    host: Annotated[str, typer.Option()] = get_settings().serve.host,
    port: Annotated[int, typer.Option()] = get_settings().serve.port,
    users: Annotated[int, typer.Option()] = get_settings().synth.users,
    items: Annotated[int, typer.Option()] = get_settings().synth.items,
    days: Annotated[int, typer.Option()] = get_settings().synth.days,
    seed: Annotated[int, typer.Option()] = get_settings().synth.seed,
) -> None:
    """Run every stage on generated data, then serve and print example requests."""
    settings = get_settings()
    started = time.perf_counter()
    run_synth(settings, users, items, days, seed, None)
    run_validate(settings, settings.validation.max_bad_fraction)
    run_features(settings)
    run_materialize(settings)
    run_embed(settings, "text")
    # `recsys item2vec` is not a demo stage: the session pipeline trained above is what serves
    # sessions (`POST /recommendations`, `similar?method=sessions`); item2vec, weaker than its
    # sources on next-item prediction, is an optional source and a command of its own.
    run_train(settings)
    run_index(settings)
    console.rule("[bold]ready")
    console.print(
        f"  all stages in {time.perf_counter() - started:.1f}s; data root {settings.home}"
    )
    user_id = example_user(settings)
    console.print(f"  console: http://{host}:{port}/   (API docs: http://{host}:{port}/docs)",
                  soft_wrap=True, highlight=False)  # fmt: skip
    console.print("  try:")
    for path in (f"users/{user_id}/recommendations?k=10", "users/new-visitor/recommendations?k=5",
                 "health"):  # fmt: skip
        console.print(f"    curl -s 'http://{host}:{port}/{path}'", soft_wrap=True,
                      highlight=False)  # fmt: skip
    visit = json.dumps({"session_items": example_visit(settings), "k": 5})
    console.print(f"    curl -s -X POST 'http://{host}:{port}/recommendations' "
                  f"-H 'Content-Type: application/json' -d '{visit}'", soft_wrap=True,
                  highlight=False)  # fmt: skip
    if serve:
        run_serve(settings, host, port)


def example_user(settings: Settings) -> str:
    """A real shopper of the data set: the one who bought most (viewed most, without orders)."""
    import duckdb

    path = settings.features_dir / "user_features.parquet"
    with duckdb.connect() as con:
        row = con.execute(
            f"SELECT user_id FROM {parquet(path)} "
            "ORDER BY purchases_total DESC, views_total DESC, user_id LIMIT 1"
        ).fetchone()
    if row is None:
        raise _fail(RuntimeError(f"no users in {path}"))
    return str(row[0])


def example_visit(settings: Settings) -> list[str]:
    """A real visit of the data set to replay: the last three items of its newest session of
    three or more (newest first, as `POST /recommendations` takes them)."""
    import duckdb

    from recsys.core.schema import table_path

    path = table_path(settings.validated_dir, "interactions")
    with duckdb.connect() as con:
        row = con.execute(
            f"""SELECT list(item_id ORDER BY "timestamp" DESC) FROM {parquet(path)}
                WHERE session_id IS NOT NULL GROUP BY session_id
                HAVING count(DISTINCT item_id) >= 3 ORDER BY max("timestamp") DESC LIMIT 1"""
        ).fetchone()
    return list(dict.fromkeys(row[0]))[:3] if row else []


def _override(settings: Settings, section: str, **values: Any) -> Settings:
    """``settings`` with the command line's values for ``section`` (None or 0: not given)."""
    updates = {k: v for k, v in values.items() if v}
    if not updates:
        return settings
    part = getattr(settings, section).model_copy(update=updates)
    return settings.model_copy(update={section: part})


def _parse_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"--end-date {value!r} is not YYYY-MM-DD") from exc


if __name__ == "__main__":
    app()
