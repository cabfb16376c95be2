"""The request path: Feast online features -> the served pipeline -> items with reasons.

Everything slow (Feast registry, model weights, candidate sources, ranker, vector store) is
loaded once when the service starts; a request does one online read, one small forward pass,
one vector search, a sparse gather over co-purchase neighbours, a few rule lookups and one
ranker call over a few hundred candidates.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.context import NO_FILTERS, UNKNOWN, ItemFilters, UserContext
from models.item2vec import load_item2vec
from models.served_pipeline import Ranking, ServedPipeline
from models.sources.two_tower import store_search
from recsys.core.arrays import top_k, unit_rows
from recsys.core.catalog import item_payloads
from recsys.core.event_log import EventLog
from recsys.core.run import Run
from recsys.core.settings import Settings
from recsys.core.values import json_value
from recsys.core.vectorstore import VectorStore, open_vector_store
from serving import console_data
from serving.events import Event, EventIntake
from serving.online import ACTIVITY_VIEW, OnlineStore
from serving.stages import StageGuard

log = logging.getLogger(__name__)

ITEM_FIELDS = ("item_id", "title", "category", "colour", "price")
BY_TEXT = "similar description"
BY_TOWER = "similar style and attributes"
BY_SESSIONS = "viewed in the same sessions"
BY_PURCHASES = "bought by the same shoppers"
#: The user row's key for when their activity row was written (their last event).
VISIT_AT = "activity_at"
#: What the console's user page shows of a shopper's features.
PROFILE_FIELDS = ("age_bucket", "fav_category", "fav_colour", "fav_department",
                  "purchases_total", "views_total", "sessions_total", "spend_total",
                  "mean_price_paid", "days_since_last_purchase")  # fmt: skip


@dataclass
class Recommendation:
    user_id: str
    items: list[dict[str, Any]]
    fallback: bool
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    degraded: bool = False  # a dependency failed: the answer comes from popularity


@dataclass
class ServedRun:
    """One model run and the vector collection built from it: they only make sense together."""

    run: Run
    vectors: VectorStore
    pipeline: ServedPipeline
    item_vectors: np.ndarray
    item_fields: dict[str, dict[str, Any]]
    # what `similar?method=content` ranks by: text embeddings when the model has them
    content_vectors: np.ndarray | None = None
    content_reason: str = BY_TOWER
    # what `similar?method=sessions` ranks by: the newest `recsys item2vec` run's vectors in
    # this run's item order (zero rows: items it never saw), None without such a run
    session_vectors: np.ndarray | None = None
    session_run: str | None = None
    # the run's session pipeline (`POST /recommendations`, `similar?method=sessions`), None
    # when it has none: session answers then come from the user pipeline
    session_pipeline: ServedPipeline | None = None


class Recommender:
    """Holds the loaded models, feature store and vector store for the API process.

    The vector store alias (``recsys index`` moves it, ``recsys rollback`` moves it back) says
    which run is served: a watcher thread notices when it moves, loads that run and its
    collection in the background, and the next request switches to them, without a restart.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # the `user_serving` service's views are resolved once; each request reads one row
        self.online = OnlineStore(settings)
        self.guard = StageGuard({"features": settings.serve.features_timeout_ms,
                                 "search": settings.serve.search_timeout_ms})  # fmt: skip
        self.served = self._load(self._open_vectors())
        log_ = EventLog(settings.home / "events", settings.serve.event_log_max_bytes)
        signal = self.served.run.manifest.get("data", {}).get("signal", "purchase")
        self.visit_gap = pd.Timedelta(minutes=settings.sessions.visit_gap_minutes)
        self.intake = EventIntake(log_, self.online, signal, self.visit_gap)
        self.intake.replay()  # what a crash left logged but not applied
        _freeze_loaded(collect=True)
        self._pending: ServedRun | None = None
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
        if settings.serve.alias_poll_s > 0:
            self._watcher.start()

    # ------------------------------------------------------------------ the served run
    def _open_vectors(self) -> VectorStore:
        # a private read-only copy per process (edge): several uvicorn workers can serve at
        # once, and `recsys index` can publish a new collection while this one serves
        return open_vector_store(self.settings.vector_store, self.settings.home, read_only=True)

    def _load(self, vectors: VectorStore) -> ServedRun:
        """The run the alias names (its collection's run id), else ``artifacts/current``."""
        artifacts, run_id = self.settings.artifacts_dir, None
        try:
            run_id = vectors.current_run_id
        except Exception:  # a missing collection: serve the current run, degraded searches
            log.exception("vector store alias unreadable: serving artifacts/current")
        named = run_id and (artifacts / run_id).is_dir()
        run = Run(artifacts / run_id) if named else Run.current(artifacts)
        item_vectors = run.item_vectors()
        served = ServedRun(run, vectors, None, item_vectors, {})  # type: ignore[arg-type]
        # the search reads served.vectors on each call: a store swapped in is used at once
        search = self.guard.wrap("search", store_search(lambda: served.vectors))
        served.pipeline = pipeline = ServedPipeline.load(run, self.settings, search, item_vectors)
        item_ids = pipeline.items.item_ids
        served.session_pipeline = ServedPipeline.load_session(run, self.settings,
                                                              pipeline.items.vocab)  # fmt: skip
        served.content_vectors, served.content_reason = _content_space(pipeline.model, item_vectors)
        served.session_vectors, served.session_run = _session_space(artifacts, item_ids)
        # response fields of every item, ready to copy: a pandas lookup per item costs ~0.1 ms
        rows = item_payloads(self.settings, item_ids).to_dict("records")
        served.item_fields = {
            r["item_id"]: {f: json_value(r.get(f)) for f in ITEM_FIELDS} for r in rows
        }
        self._warm(served)
        log.info("serving model run %s with collection %s", run.id, _current(vectors))
        return served

    def _warm(self, served: ServedRun) -> None:
        """One search and one ranking now, so the first visitor does not pay for page faults
        in a freshly opened index (it can exceed the search budget on a busy machine)."""
        try:
            dim = served.item_vectors.shape[1]
            served.vectors.search(np.full(dim, dim**-0.5, dtype=np.float32), 10)
            served.pipeline.recommend(served.pipeline.context(None, None), 10)
        except Exception:  # a missing collection is reported by /health, not here
            log.warning("warm-up search failed", exc_info=True)

    def _watch(self) -> None:
        """Poll the alias; when it moves, load the new run beside the old one."""
        alias = self.settings.vector_store.collection
        while not self._stop.wait(self.settings.serve.alias_poll_s):
            try:
                store = self.served.vectors
                target = store.alias_target(alias)
                if self._pending is not None or target in (None, _current(store)):
                    continue
                log.info("alias %s moved to %s: loading it", alias, target)
                self._pending = self._load(self._open_vectors())
                _freeze_loaded(collect=False)  # a full collection now would stall requests
            except Exception:
                log.exception("following the vector store alias failed; will retry")

    def _follow(self) -> None:
        """Switch to a run the watcher has loaded (attribute swaps only: microseconds)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        old, self.served = self.served, pending
        log.info("now serving run %s (was %s)", pending.run.id, old.run.id)
        # requests already holding the old store finish first; then let its copy go
        threading.Timer(5.0, old.vectors.close).start()

    # names the rest of the code and the benchmarks use
    @property
    def vectors(self) -> VectorStore:
        return self.served.vectors

    @vectors.setter
    def vectors(self, store: VectorStore) -> None:
        self.served.vectors = store

    @property
    def pipeline(self) -> ServedPipeline:
        return self.served.pipeline

    @property
    def items(self) -> Any:
        return self.pipeline.items

    @property
    def model_version(self) -> str:
        return self.served.run.id

    def user_features(self, user_id: str) -> dict[str, Any] | None:
        """The user's online row (batch features + pushed activity), None if never seen.

        Items bought since the last batch run (pushed by ``POST /events``) are put in front of
        ``purchased_items``: the already-bought filter and the user tower both see them.
        """
        values, written = self.online.read_timed(user_id)
        if all(v is None for k, v in values.items() if k != "user_id"):
            return None
        values[VISIT_AT] = written.get(ACTIVITY_VIEW)
        fresh = [b for b in (values.get("recent_purchases") or []) if b]
        batch = [b for b in (values.get("purchased_items") or []) if b]
        values["purchased_items"] = list(dict.fromkeys([*fresh, *batch]))
        return values

    def visit(self, features: dict[str, Any] | None) -> list[str]:
        """Items a known user viewed in their visit in progress, newest first: the newest of
        their recent views, as many as the visit's events (``session_events``), capped at
        ``sessions.max_prefix``; none when their last event is older than the visit gap (the
        activity of ``recsys features`` is history, not a visit)."""
        last = (features or {}).get(VISIT_AT)
        if last is None or pd.Timestamp.now(tz="UTC") - pd.Timestamp(last) > self.visit_gap:
            return []
        assert features is not None
        views = [v for v in (features.get("recent_views") or []) if v and self.known_item(v)]
        events = int(features.get("session_events") or 0)
        return views[: min(events, self.settings.sessions.max_prefix)]

    def record_events(self, events: list[Event]) -> tuple[int, int]:
        """Log, then apply to the online store, exactly once (:class:`EventIntake`); return
        (events acknowledged, of which retries of a logged ``event_id``)."""
        return self.intake.record(events)

    def known_item(self, item_id: str) -> bool:
        return self.items.index(item_id) > 0

    # ------------------------------------------------------------------ recommendations
    def recommend(self, user_id: str, k: int, filters: ItemFilters = NO_FILTERS) -> Recommendation:
        """Top-k for a user through the served pipeline; never raises for a failing dependency.

        Unknown user: the anonymous visitor's answer, ``fallback``. Feature store failing: the
        anonymous answer minus nothing known, ``degraded``. Vector store failing: the other
        sources still run, ``degraded``.
        """
        self._follow()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            features = self.guard.call("features", self.user_features, user_id)
        except Exception as exc:  # one line per request: the traceback only at debug level
            log.warning("online features failed for %s (%s: %s): answering without them",
                        user_id, type(exc).__name__, exc)  # fmt: skip
            log.debug("online features failed", exc_info=True)
            return self._run(user_id, None, (), k, filters, timings, fallback=False,
                             degraded=True)  # fmt: skip
        finally:
            timings["features"] = (time.perf_counter() - t0) * 1e3
        visit = self.visit(features)  # what they browse now steers the answer too
        return self._run(user_id, features, visit, k, filters, timings,
                         fallback=features is None)  # fmt: skip

    def recommend_session(
        self,
        session: list[str],
        k: int,
        filters: ItemFilters = NO_FILTERS,
        age_bucket: str | None = None,
        user_id: str | None = None,
    ) -> Recommendation:
        """A visit: what was browsed (newest first) and optional context. ``user_id``: a known
        shopper, whose current visit in the online store (views posted to ``/events``) is
        merged in after the request's items.

        The session pipeline ranks the session sources' candidates when the run has one; else
        (or with nothing known browsed) the user pipeline answers as for an anonymous visitor.
        """
        self._follow()
        timings: dict[str, float] = {}
        if user_id:
            t0 = time.perf_counter()
            try:
                features = self.guard.call("features", self.user_features, user_id)
                session = list(dict.fromkeys([*session, *self.visit(features)]))
            except Exception as exc:  # the request's own items still answer
                log.warning("online features failed for %s (%s: %s): answering from the "
                            "request's items", user_id, type(exc).__name__, exc)  # fmt: skip
            timings["features"] = (time.perf_counter() - t0) * 1e3
        known = [i for i in session if self.known_item(i)]
        pipeline = self.served.session_pipeline
        if pipeline is None or not known:
            features = {"age_bucket": age_bucket} if age_bucket else None
            return self._run(None, features, known, k, filters, timings, fallback=not known)
        t1 = time.perf_counter()
        ranking = pipeline.recommend(UserContext(user_id, (), known), k, filters)
        timings.update(ranking.timings_ms)
        timings["pipeline"] = (time.perf_counter() - t1) * 1e3
        return self._answer(user_id, ranking, timings, fallback=False)

    def _run(
        self,
        user_id: str | None,
        features: dict[str, Any] | None,
        session: Sequence[str],
        k: int,
        filters: ItemFilters,
        timings: dict[str, float],
        fallback: bool,
        degraded: bool = False,
    ) -> Recommendation:
        t1 = time.perf_counter()
        ctx = self.pipeline.context(user_id, features, session)
        timings["user_tower"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        ranking = self.pipeline.recommend(ctx, k, filters)
        timings.update(ranking.timings_ms)
        timings["pipeline"] = (time.perf_counter() - t2) * 1e3
        return self._answer(user_id, ranking, timings, fallback, degraded)

    def _answer(
        self,
        user_id: str | None,
        ranking: Ranking,
        timings: dict[str, float],
        fallback: bool,
        degraded: bool = False,
    ) -> Recommendation:
        items = [self._item(r.item_id, r.score, rank, reasons=r.reasons, sources=r.sources)
                 for rank, r in enumerate(ranking.items, start=1)]  # fmt: skip
        return Recommendation(user_id or "", items, fallback, self.model_version, timings,
                              degraded=degraded or bool(ranking.failed))  # fmt: skip

    def _item(self, item_id: str, score: float, rank: int, **extra: Any) -> dict[str, Any]:
        """One answer item: its response fields, score and rank, then ``extra``."""
        fields = self.served.item_fields.get(item_id, {"item_id": item_id})
        return {**fields, "score": round(score, 6), "rank": rank, **extra}

    def similar(self, item_id: str, k: int, method: str = "hybrid") -> tuple[str, list[dict]]:
        """Neighbours of an item: behaviour (co-purchase weights), sessions (item2vec: viewed
        in the same browsing sessions), content, or hybrid (all that the item has, fused by
        reciprocal rank). Returns (the method used, items).

        Behaviour falls back to sessions, then content, for an item nobody bought yet (it may
        still be browsed); sessions falls back to content for an item item2vec never saw.
        Content is the cosine of the items' text embeddings when the served model has them
        ("similar description"), else of the item-tower vectors ("similar style and
        attributes"); an item without text falls back to its item-tower vector.
        """
        served = self.served
        index = self.items.index(item_id)
        item_item = self.pipeline.generator.source("item_item")
        behaviour_ids, behaviour_scores = (
            item_item.neighbours.neighbours(index, k * 2)  # type: ignore[attr-defined]
            if item_item is not None
            else (np.empty(0, dtype=np.int64), np.empty(0))
        )
        session_ids, session_scores = self._session_neighbours(index, k * 2)
        has_sessions = len(session_ids) > 0
        bought = len(behaviour_ids) > 0
        used = method
        if method == "behaviour" and not bought:
            used = "sessions" if has_sessions else "content"
        elif not has_sessions and (method == "sessions" or method == "hybrid" and not bought):
            used = "content"
        lists: list[tuple[str, np.ndarray, np.ndarray]] = []
        if used in ("behaviour", "hybrid") and bought:
            lists.append((BY_PURCHASES, behaviour_ids, behaviour_scores))
        if used in ("sessions", "hybrid") and has_sessions:
            lists.append((BY_SESSIONS, session_ids, session_scores))
        if used in ("content", "hybrid"):
            vectors, reason = served.content_vectors, served.content_reason
            if vectors is None or not vectors[index].any():
                vectors, reason = served.item_vectors, BY_TOWER
            lists.append((reason, *_nearest(vectors, index, k * 2)))
        fused: dict[int, tuple[float, list[str]]] = {}
        for reason, ids, scores in lists:
            for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True)):
                value = 1.0 / (60 + rank) if len(lists) > 1 else float(s)
                prev = fused.get(i, (0.0, []))
                fused[i] = (prev[0] + value, [*prev[1], reason])
        ranked = sorted(fused.items(), key=lambda t: -t[1][0])[:k]
        return used, [self._item(self.items.item_ids[i - 1], v, r, reasons=reasons)
                      for r, (i, (v, reasons)) in enumerate(ranked, start=1)]  # fmt: skip

    def _session_neighbours(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """What shoppers view next after item ``index``: the session pipeline's answer to a
        visit of that one item (its session sources and ranker), else the newest item2vec
        run's cosine neighbours; empty when neither knows the item."""
        served = self.served
        if served.session_pipeline is not None:
            ctx = UserContext(None, (), [self.items.item_ids[index - 1]])
            ranking = served.session_pipeline.recommend(ctx, n)
            if not ranking.failed and any(r.sources != ["popular"] for r in ranking.items):
                ids = np.array([r.index for r in ranking.items], dtype=np.int64)
                return ids, np.array([r.score for r in ranking.items])
        vectors = served.session_vectors
        if vectors is not None and vectors[index].any():
            return _nearest(vectors, index, n)
        return np.empty(0, dtype=np.int64), np.empty(0)

    def bought_together(self, item_id: str, k: int) -> list[dict[str, Any]]:
        source = self.pipeline.generator.source("bought_together")
        if source is None:  # the source is off: no rules were fitted
            return []
        rules = source.rules.for_item(item_id, k)  # type: ignore[attr-defined]
        return [
            self._item(rule.consequent, rule.confidence, r, confidence=rule.confidence,
                       lift=rule.lift, support=rule.support,
                       reasons=[f"bought together with {item_id} in {rule.pair_baskets} baskets"])
            for r, rule in enumerate(rules, start=1)
        ]  # fmt: skip

    def popular(self, k: int, window: str, category: str | None) -> list[dict[str, Any]]:
        source = self.pipeline.generator.source("popular")
        if source is None:  # the source is off: no popularity table was fitted
            return []
        top = source.table.top(k, window=window, category=category)  # type: ignore[attr-defined]
        where = f" in {category}" if category else ""
        reasons = [f"among the most bought{where} ({window})"]
        return [self._item(i, s, r, reasons=reasons) for r, (i, s) in enumerate(top, start=1)]

    # ------------------------------------------------------------------ the web console
    def item_details(self, item_id: str) -> dict[str, Any]:
        """A catalogue item as the console shows it: the answer fields (title, category,
        colour, price) plus department, stock and purchases from the served run's catalogue,
        the one the request filters read, so that what the console shows is what filters see.
        ``item_id`` must be known (:meth:`known_item`)."""
        return self._catalogue_item(self.pipeline.catalog.index(item_id))

    def _catalogue_item(self, index: int) -> dict[str, Any]:
        items = self.pipeline.catalog
        item_id = items.item_id(index)
        department = items.department_names[items.department[index]]
        return {
            **self.served.item_fields.get(item_id, {"item_id": item_id}),
            "department": None if department == UNKNOWN else department,
            "in_stock": bool(items.in_stock[index]),
            "purchases": int(items.counts[index]),
            "recent_purchases": int(items.recent_counts[index]),
        }

    def catalogue(
        self, q: str | None, filters: ItemFilters, limit: int, offset: int = 0
    ) -> tuple[int, list[dict[str, Any]]]:
        """Catalogue items whose title or id contains ``q`` (any case) and that pass
        ``filters`` (the recommendation filters' own mask), most bought first: the console's
        item browser. Returns (how many match, the page ``offset:offset + limit``)."""
        items = self.pipeline.catalog
        mask = items.allowed(filters)
        keep = np.ones(items.n_items, dtype=bool) if mask is None else mask.copy()
        keep[0] = False
        if q and q.strip():
            needle = q.strip().casefold()
            text = self._search_text()
            keep &= np.fromiter((needle in t for t in text), dtype=bool, count=len(text))
        rows = np.flatnonzero(keep)
        # most bought first, then catalogue order: a stable page for the same query
        rows = rows[np.lexsort((rows, -items.counts[rows]))]
        page = rows[offset : offset + limit]
        return len(rows), [self._catalogue_item(int(i)) for i in page]

    def _search_text(self) -> list[str]:
        """``title id`` per item index, case-folded, for :meth:`catalogue`; built once per
        served run's catalogue (the run can change under the API: the cache follows it)."""
        items = self.pipeline.catalog
        cached = getattr(self, "_search_cache", None)
        if cached is None or cached[0] is not items:
            text = [""] + [f"{items.titles[i]} {items.item_id(i)}".casefold()
                           for i in range(1, items.n_items)]  # fmt: skip
            cached = self._search_cache = (items, text)
        return cached[1]

    def facets(self) -> dict[str, list[str]]:
        """The values the console's filters offer: the served catalogue's categories,
        departments and colours (what the filters can match)."""
        items = self.pipeline.catalog
        return {
            "category": [n for n in items.category_names if n != UNKNOWN],
            "department": [n for n in items.department_names if n != UNKNOWN],
            "colour": [n for n in items.colour_names if n != UNKNOWN],
        }

    def history(self, user_id: str, limit: int) -> dict[str, Any] | None:
        """What is known of a shopper, newest first: their purchases (the batch history with
        purchases posted since in front, as the recommendations see it), their recent views,
        the visit in progress and their profile features; None for a user never seen.

        Not time-boxed like a recommendation's feature read: this is a page for a person, and
        a failing store raises (the API answers 503) rather than showing an empty history.
        """
        features = self.user_features(user_id)
        if features is None:
            return None
        views = [v for v in (features.get("recent_views") or []) if v]
        written = features.get(VISIT_AT)
        return {
            "user_id": user_id,
            "purchases": [self._history_item(i) for i in features["purchased_items"][:limit]],
            "recent_views": [self._history_item(i) for i in views[:limit]],
            "visit": self.visit(features),
            "last_event_at": None if written is None else pd.Timestamp(written).isoformat(),
            "profile": {k: json_value(features.get(k)) for k in PROFILE_FIELDS},
        }

    def _history_item(self, item_id: str) -> dict[str, Any]:
        """A catalogue item, or the bare id of one the served run does not know (a purchase
        of an item added after it was trained)."""
        index = self.pipeline.catalog.index(item_id)
        return self._catalogue_item(index) if index > 0 else {"item_id": item_id}

    def example_users(self, limit: int) -> list[dict[str, Any]]:
        """The top shoppers of the feature table, for the console's picker."""
        return console_data.top_shoppers(self.settings, limit)

    def overview(self) -> dict[str, Any]:
        """The console's model page: the served run and its manifest, the last evaluation and
        validation, and the collection alias's history with the rollback commands. Follows a
        moved alias first (as a recommendation does): the page shows what is served now."""
        self._follow()
        served = self.served
        try:
            current: str | None = Run.current(self.settings.artifacts_dir).id
        except (FileNotFoundError, OSError):
            current = None
        alias = self.settings.vector_store.collection
        return {
            "model_version": served.run.id,
            "artifacts_current": current,
            "run": console_data.run_summary(served.run),
            "sources": [s.name for s in self.pipeline.generator.sources],
            "session_sources": [s.name for s in served.session_pipeline.generator.sources]
            if served.session_pipeline is not None else [],
            "item2vec_run": served.session_run,
            "evaluation": console_data.evaluation_summary(self.settings, served.run.id),
            "validation": console_data.validation_summary(self.settings),
            "aliases": console_data.alias_summary(served.vectors, alias, _current(served.vectors)),
        }  # fmt: skip

    def health(self) -> dict[str, Any]:
        sources = [s.name for s in self.pipeline.generator.sources]
        checks: dict[str, Any] = {
            "model": {"ok": True, "version": self.model_version, "sources": sources},
            "worker_pid": os.getpid(),  # which uvicorn worker answered
        }
        checks["feature_store"] = self.online.probe()  # a write and a read, as events do
        if checks["feature_store"]["ok"]:
            self.intake.replay()  # events a failed push left out go in now, not at the next post
        checks["vector_store"] = self.vectors.health()
        checks["ok"] = all(c.get("ok", False) for c in checks.values() if isinstance(c, dict))
        return checks

    def close(self) -> None:
        self._stop.set()
        self.guard.close()
        self.served.vectors.close()
        if self._pending is not None:
            self._pending.vectors.close()


def _content_space(model: Any, item_vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """Vectors (row = item index) whose cosine ``similar?method=content`` ranks by, and why.

    The model's frozen text embeddings when it has them: they say what an item *is* (its
    description), where item-tower vectors also carry who bought it. `recsys embed` writes
    unit rows and training zeroes those of items without text (left out of the answers), so
    a dot product is the cosine; rows are re-normalised here only if a table from elsewhere
    is not.
    """
    if getattr(model.cfg, "text_dim", 0) <= 0:
        return item_vectors, BY_TOWER
    text = model.item_text.detach().cpu().numpy()
    norms = np.linalg.norm(text, axis=1)
    if not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
        text = unit_rows(text)
    return text, BY_TEXT


def _nearest(vectors: np.ndarray, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` rows most similar to row ``index`` by dot product (unit rows: cosine), best
    first; the row itself, padding row 0 and zero rows (nothing known) are left out."""
    scores = vectors @ vectors[index]
    scores[~vectors.any(axis=1)] = -np.inf
    scores[[0, index]] = -np.inf
    top = top_k(scores, n, finite_only=True)
    return top, scores[top]


def _session_space(
    artifacts: Path, item_ids: Sequence[str]
) -> tuple[np.ndarray | None, str | None]:
    """The newest item2vec run under ``artifacts`` (``recsys item2vec``) as unit vectors in
    the served vocabulary's order (row = item index, row 0 and unseen items zero), and its
    name; (None, None) without one. Runs are named by time, so the newest sorts last."""
    for folder in Run.newest_first(artifacts, "item2vec_"):
        try:
            run = load_item2vec(folder)
        except Exception:  # a run still being written, or a broken one: the one before
            log.warning("skipping item2vec run %s: it does not load", folder.path, exc_info=True)
            continue
        rows = run.vocab.encode(list(item_ids))
        vectors = unit_rows(run.vectors.astype(np.float32))
        out = np.zeros((len(item_ids) + 1, vectors.shape[1]), dtype=np.float32)
        out[1:] = vectors[rows]
        out[1:][rows == 0] = 0.0
        log.info("session neighbours from %s: %d of %d items", folder.id,
                 int((rows > 0).sum()), len(item_ids))  # fmt: skip
        return out, folder.id
    return None, None


def _freeze_loaded(collect: bool) -> None:
    """Move everything loaded so far out of the cyclic garbage collector's sight.

    A served run is ~450k long-lived Python objects (vocabularies, item fields, Feast's
    registry). Python's full (generation 2) collection walks all of them: ~100-230 ms on this
    machine, every few thousand requests, which was the whole p99 tail of the API. Frozen
    objects are still freed by reference counting when a run is swapped out; only reference
    cycles among them are kept (none are expected in loaded artefacts).
    """
    if collect:
        gc.collect()
    gc.freeze()


def _current(store: VectorStore) -> str | None:
    """The collection a store reads, None when it cannot tell (e.g. nothing indexed)."""
    try:
        return store.current_collection
    except Exception:
        return None
