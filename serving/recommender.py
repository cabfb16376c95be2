"""The request path: Feast online features -> user tower -> Qdrant search -> business rules.

Everything slow (Feast registry, model weights, vector store, popular list) is loaded once when
the service starts; a request only does one online read, one small forward pass and one vector
search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from models.artifacts import current_run, load_run
from pipelines.index import item_payloads
from recsys.config import Settings
from recsys.feast_store import open_store
from recsys.vectorstore import SearchFilter, VectorStore, open_vector_store
from serving.events import Event, EventLog, activity_rows, stamp

log = logging.getLogger(__name__)

ITEM_FIELDS = ("item_id", "title", "category", "colour", "price")
ACTIVITY_REFS = [
    f"user_activity:{c}" for c in ("recent_views", "recent_purchases", "session_events")
]


@dataclass
class Recommendation:
    user_id: str
    items: list[dict[str, Any]]
    fallback: bool
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    degraded: bool = False  # a dependency failed: the answer comes from popularity


class Recommender:
    """Holds the loaded model, feature store and vector store for the API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = current_run(settings.artifacts_dir)
        self.model, self.users, self.items, self.manifest = load_run(self.run_dir)
        self.model_version = self.run_dir.name
        self.feature_store = open_store(settings)
        # Warm the registry cache now so the first request does not pay for it.
        # The `user_serving` feature service is the API's contract with the feature repo.
        self.serving_features = self.feature_store.get_feature_service("user_serving")
        self.feature_store.get_online_features(
            features=self.serving_features, entity_rows=[{"user_id": "__warmup__"}]
        )
        self.event_log = EventLog(settings.home / "events" / "events.jsonl")
        self.vectors: VectorStore = open_vector_store(settings.vector_store, settings.home)
        popular = pd.read_parquet(self.run_dir / "popular.parquet")
        payloads = item_payloads(settings, popular["item_id"].tolist()).to_dict("records")
        self.popular = [
            {**_item_fields(payload), "score": float(score)}
            for payload, score in zip(payloads, popular["score"], strict=True)
        ]

    def user_features(self, user_id: str) -> dict[str, Any] | None:
        """The user's online row (batch features + pushed activity), None if never seen.

        Items bought since the last batch run (pushed by ``POST /events``) are put in front of
        ``purchased_items``: the already-bought filter and the user tower both see them.
        """
        row = self.feature_store.get_online_features(
            features=self.serving_features, entity_rows=[{"user_id": user_id}]
        ).to_dict()
        values = {k: v[0] for k, v in row.items()}
        if all(v is None for k, v in values.items() if k != "user_id"):
            return None
        fresh = [b for b in (values.get("recent_purchases") or []) if b]
        batch = [b for b in (values.get("purchased_items") or []) if b]
        values["purchased_items"] = list(dict.fromkeys([*fresh, *batch]))
        return values

    def record_events(self, events: list[Event]) -> int:
        """Log durably, then push each user's folded activity to the online store."""
        from feast.data_source import PushMode

        events = stamp(events)
        self.event_log.append(events)
        users = sorted({e.user_id for e in events})
        online = self.feature_store.get_online_features(
            features=ACTIVITY_REFS, entity_rows=[{"user_id": u} for u in users]
        ).to_dict()
        current = {
            u: {name.split(":")[1]: online[name.split(":")[1]][i] for name in ACTIVITY_REFS}
            for i, u in enumerate(online["user_id"])
        }
        self.feature_store.push(
            "user_activity_push", activity_rows(events, current), to=PushMode.ONLINE
        )
        return len(events)

    def known_item(self, item_id: str) -> bool:
        return self.items.index(item_id) > 0

    def recommend(self, user_id: str, k: int) -> Recommendation:
        """Top-k for a user; never raises for a failing dependency.

        Unknown user: popular items, ``fallback``. Feature store or vector store failing:
        popular items minus what is known to be bought, ``degraded`` (and the error logged).
        """
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            features = self.user_features(user_id)
        except Exception:
            log.exception("online features failed for %s: answering with popular items", user_id)
            return self._popular(user_id, k, timings, degraded=True)
        finally:
            timings["features"] = (time.perf_counter() - t0) * 1e3
        if features is None:
            return self._popular(user_id, k, timings)
        t1 = time.perf_counter()
        bought = features["purchased_items"]
        with torch.no_grad():
            inputs = self.users.encode({k: [v] for k, v in features.items()}, self.items)
            vector = self.model.user_vectors({k: torch.as_tensor(v) for k, v in inputs.items()})
        exclude = frozenset(int(i) for i in self.items.indices(bought) if i > 0)
        timings["user_tower"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        try:
            hits = self.vectors.search(vector[0].numpy(), k, SearchFilter(exclude_ids=exclude))
        except Exception:
            log.exception("vector search failed for %s: answering with popular items", user_id)
            return self._popular(user_id, k, timings, degraded=True, bought=set(bought))
        finally:
            timings["search"] = (time.perf_counter() - t2) * 1e3
        items = [
            {**_item_fields(h.payload), "score": round(h.score, 6), "rank": rank,
             "reasons": ["two-tower: matches your purchase history and profile"]}
            for rank, h in enumerate(hits, start=1)
        ]  # fmt: skip
        return Recommendation(user_id, items, False, self.model_version, timings)

    def _popular(
        self,
        user_id: str,
        k: int,
        timings: dict[str, float],
        degraded: bool = False,
        bought: set[str] | frozenset[str] = frozenset(),
    ) -> Recommendation:
        chosen = [p for p in self.popular[: k + len(bought)] if p["item_id"] not in bought][:k]
        items = [
            {**p, "rank": rank, "reasons": ["popular in the last 14 days"]}
            for rank, p in enumerate(chosen, start=1)
        ]
        return Recommendation(
            user_id, items, not degraded, self.model_version, timings, degraded=degraded
        )

    def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {"model": {"ok": True, "version": self.model_version}}
        try:
            t0 = time.perf_counter()
            self.user_features("__health__")
            checks["feature_store"] = {
                "ok": True,
                "online_store": self.feature_store.config.online_store.type,
                "latency_ms": round((time.perf_counter() - t0) * 1e3, 3),
            }
        except Exception as exc:  # health must report, never raise
            checks["feature_store"] = {"ok": False, "error": str(exc)}
        checks["vector_store"] = self.vectors.health()
        checks["ok"] = all(c.get("ok", False) for c in checks.values() if isinstance(c, dict))
        return checks

    def close(self) -> None:
        self.vectors.close()


def _item_fields(source: Any) -> dict[str, Any]:
    out = {name: source.get(name) for name in ITEM_FIELDS}
    out["price"] = None if out["price"] is None else float(out["price"])
    return out
