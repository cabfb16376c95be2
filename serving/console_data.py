"""What the web console shows beyond recommendations: example shoppers, the served run, its
evaluation, the last data validation and the collection alias's history.

Everything is read from the data root the API serves (the run folder, ``reports/`` and the
features), never made up: a part that a stage has not written yet (``recsys evaluate`` was never
run, say) comes back as ``None`` and the console says which command writes it. These readers are
for a human looking at a page, not for the recommendation hot path, so they read small files on
each call; the one scan over a table (the top shoppers) is cached per version of that file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from recsys.core.run import Run
from recsys.core.schema import USER_FEATURES, table_path
from recsys.core.settings import Settings
from recsys.core.sql import parquet
from recsys.core.values import json_value
from recsys.core.vectorstore import VectorStore

log = logging.getLogger(__name__)

#: Where the console links to the Great Expectations Data Docs (``recsys validate`` writes
#: them under ``reports/data_docs``); the API serves that folder read-only at this prefix.
DATA_DOCS_URL = "/data-docs/"
#: The metrics of the evaluation table, at the protocol's first cut-off (``{k}``) and others.
EVALUATION_COLUMNS = ("recall@{k}", "ndcg@{k}", "hit@{k}", "map@{map_k}", "recall@{k_max}",
                      "coverage@{k}")  # fmt: skip


# --------------------------------------------------------------------------- shoppers
def top_shoppers(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """The shoppers with the most purchases in ``recsys features``' user table (their latest
    snapshot), for the console's user picker; ``[]`` before ``recsys features`` has run."""
    path = settings.features_dir / f"{USER_FEATURES}.parquet"
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    return [dict(row) for row in _top_shoppers(str(path), stamp, limit)]


@functools.lru_cache(maxsize=8)
def _top_shoppers(path: str, stamp: int, limit: int) -> tuple[dict[str, Any], ...]:
    """One grouped scan of the daily snapshots, cached per file version (``stamp``) and
    ``limit``: the table holds a row per shopper and day, millions on a real shop."""
    import duckdb

    sql = f"""
        SELECT user_id,
               max(purchases_total) AS purchases,
               max(spend_total) AS spend,
               arg_max(fav_category, event_timestamp) AS fav_category,
               arg_max(age_bucket, event_timestamp) AS age_bucket
        FROM {parquet(path)}
        GROUP BY user_id
        ORDER BY purchases DESC NULLS LAST, spend DESC NULLS LAST, user_id
        LIMIT ?"""  # noqa: S608 - the path is quoted by parquet(); limit is bound
    with duckdb.connect() as con:
        rows = con.execute(sql, [limit]).fetchall()
    keys = ("user_id", "purchases", "spend", "fav_category", "age_bucket")
    return tuple({k: json_value(v) for k, v in zip(keys, row, strict=True)} for row in rows)


# --------------------------------------------------------------------------- the model
def run_summary(run: Run) -> dict[str, Any]:
    """What the console shows of a model run: its manifest's data, metrics and pipelines."""
    try:
        manifest = run.manifest
    except (FileNotFoundError, ValueError):
        return {"run_id": run.id, "complete": False}
    out: dict[str, Any] = {
        "run_id": run.id,
        "complete": True,
        "created_at": manifest.get("created_at"),
        # the data it learnt from; not where (a server path is no business of a page)
        "data": {k: v for k, v in (manifest.get("data") or {}).items() if k != "home"},
        "metrics": manifest.get("metrics") or {},
        "train_config": manifest.get("train_config") or {},
    }
    for pipeline in ("ranking", "sessions"):  # the user and the session pipeline
        part = manifest.get(pipeline) or {}
        ranker = part.get("ranker") or {}
        out[pipeline] = {
            "sources": sorted(part.get("sources") or {}),
            "features": len(part.get("features") or []),
            "valid_ndcg@10": ranker.get("valid_ndcg@10"),
            "valid_ndcg@10_vs_sources": ranker.get("valid_ndcg@10_vs_sources") or {},
        } if part else None  # fmt: skip
    return out


def evaluation_summary(settings: Settings, served_run: str) -> dict[str, Any] | None:
    """The table of ``recsys evaluate``'s ``evaluation.json`` (every peer and the served
    pipeline on one split), None when it has not been run. ``stale``: it scored another run
    than the one served."""
    path = settings.reports_dir / "evaluation" / "evaluation.json"
    body = _read_json(path)
    if not isinstance(body, dict):
        return None
    protocol = body.get("protocol") or {}
    ks = [k for k in protocol.get("ks") or [] if isinstance(k, int)] or [10]
    map_ks = [k for k in protocol.get("map_ks") or [] if isinstance(k, int)] or [ks[0]]
    columns = list(dict.fromkeys(c.format(k=ks[0], map_k=map_ks[0], k_max=ks[-1])
                                 for c in EVALUATION_COLUMNS))  # fmt: skip
    rows: list[dict[str, Any]] = []
    models = {**(body.get("models") or {}), "served pipeline": body.get("served") or {}}
    for name, result in models.items():
        overall = result.get("overall") if isinstance(result, dict) else None
        if not isinstance(overall, dict):  # a peer that failed says why
            error = result.get("error") if isinstance(result, dict) else None
            rows.append({"model": name, "metrics": {}, "error": error or "no result"})
            continue
        metrics = {c: _finite(overall.get(c)) for c in columns}
        rows.append({"model": name, "metrics": metrics, "users": overall.get("users")})
    served = body.get("served") or {}
    dataset = body.get("dataset") or {}
    return {
        "created_at": body.get("created_at"),
        "split": protocol.get("split"),
        "events": protocol.get("events"),
        "cutoff": protocol.get("cutoff"),
        "eval_users": dataset.get("eval_users"),
        "columns": columns,
        "rows": rows,
        "served_run": served.get("run"),
        "stale": served.get("run") not in (None, served_run),
        "top10_source_share": served.get("top10_source_share") or {},
        "report": "reports/evaluation/report.md",
    }


def validation_summary(settings: Settings) -> dict[str, Any] | None:
    """The last ``recsys validate``: per table, its Great Expectations suite's latest result
    (when, expectations passed/failed) and the rows it let through and quarantined; None
    before the first validation. Read from GX's JSON result store, not through GX (whose
    import alone takes seconds)."""
    store = settings.reports_dir / "gx" / "gx" / "uncommitted" / "validations"
    docs = settings.reports_dir / "data_docs"
    tables: list[dict[str, Any]] = []
    for suite in sorted(p for p in store.glob("*") if p.is_dir()) if store.is_dir() else []:
        results = sorted(suite.glob("*/*/*.json"), key=lambda p: p.parent.name)
        body = _read_json(results[-1]) if results else None
        if not isinstance(body, dict):
            continue
        stats = body.get("statistics") or {}
        table = suite.name.removeprefix("recsys_")
        # the suite's page in the Data Docs mirrors the result store's layout
        page = docs / "validations" / results[-1].relative_to(store).with_suffix(".html")
        tables.append({
            "table": table,
            "success": bool(body.get("success")),
            "validated_at": (body.get("meta") or {}).get("validation_time"),
            "expectations": stats.get("evaluated_expectations"),
            "passed": stats.get("successful_expectations"),
            "failed": stats.get("unsuccessful_expectations"),
            "rows_valid": _parquet_rows(table_path(settings.validated_dir, table)),
            "rows_quarantined": _parquet_rows(table_path(settings.quarantine_dir, table)),
            "page": DATA_DOCS_URL + page.relative_to(docs).as_posix() if page.is_file() else None,
        })  # fmt: skip
    if not tables:
        return None
    times = [t["validated_at"] for t in tables if t["validated_at"]]
    return {
        "validated_at": max(times) if times else None,
        "success": all(t["success"] for t in tables),
        "tables": tables,
        "data_docs": DATA_DOCS_URL if (docs / "index.html").is_file() else None,
    }


def alias_summary(store: VectorStore, alias: str, serving: str | None) -> dict[str, Any]:
    """The alias's moves, newest first, each with the command that would roll back to it.

    The console shows the command; it never runs it (moving the alias is an operator's
    decision, and the API's keys have no scope for it). ``recsys rollback`` with no ``--to``
    goes to the latest earlier target that still exists.
    """
    try:
        entries = store.alias_entries(alias)
    except Exception as exc:  # an unreadable alias: say so, the rest of the page still shows
        log.warning("alias %s unreadable: %s", alias, exc)
        return {"alias": alias, "serving": serving, "history": [], "error": str(exc)}
    current = entries[-1].collection if entries else None
    history = []
    for entry in reversed(entries):
        exists = _exists(store, entry.collection)
        is_current = entry.collection == current
        history.append({
            "collection": entry.collection,
            "run_id": entry.run_id,
            "at": entry.at,
            "current": is_current,
            "exists": exists,
            "rollback_command": None if is_current or not exists
            else f"recsys rollback --to {entry.collection}",
        })  # fmt: skip
    previous = next((h for h in history if h["rollback_command"]), None)
    return {
        "alias": alias,
        "current": current,
        "serving": serving,
        "history": history,
        "rollback_default": "recsys rollback" if previous else None,
        "rollback_default_target": previous["collection"] if previous else None,
    }


# --------------------------------------------------------------------------- Data Docs
def docs_file(root: Path, path: str) -> Path | None:
    """The file under ``root`` that ``path`` (a URL path below the Data Docs prefix) names, or
    None: nothing outside ``root`` (``..``, absolute paths, links leading out) is ever served.
    A folder means its ``index.html``."""
    if "\x00" in path:
        return None
    base = root.resolve()
    try:
        target = (base / path.lstrip("/")).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, an over-long name
        return None
    if not target.is_relative_to(base):
        return None
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


# --------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> Any:
    """The parsed file, None when missing or unreadable (the page shows what it has)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _parquet_rows(path: Path) -> int | None:
    """Rows of a Parquet file from its footer (no data read); None when there is none."""
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, ValueError):
        return None


def _finite(value: Any) -> float | None:
    """A metric as a JSON number; NaN, infinities and non-numbers become None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _exists(store: VectorStore, collection: str) -> bool:
    try:
        return store.collection_exists(collection)
    except Exception:
        return False
