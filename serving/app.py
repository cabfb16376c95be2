"""FastAPI app: personalised recommendations over HTTP.

Run with ``recsys serve`` (uvicorn). The app loads the current model run, the Feast store and
the vector store once at start-up (``lifespan``) and shares them across requests.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from recsys.config import Settings, get_settings
from serving.events import Event
from serving.metrics import ApiMetrics, MetricsMiddleware
from serving.recommender import Recommender

log = logging.getLogger(__name__)


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None = None
    category: str | None = None
    colour: str | None = None
    price: float | None = None
    score: float = Field(description="Cosine similarity (model) or popularity share (fallback).")
    rank: int = Field(description="1 = best.")
    reasons: list[str] = Field(description="Why the item was proposed.")


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=1000)


class EventsAccepted(BaseModel):
    accepted: int


class RecommendationResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    fallback: bool = Field(description="True when the user is unknown and popular items are shown.")
    degraded: bool = Field(
        default=False, description="True when a dependency failed and popular items are shown."
    )
    model_version: str


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.recommender = Recommender(settings)
        log.info("serving model %s", app.state.recommender.model_version)
        yield
        app.state.recommender.close()

    app = FastAPI(
        title="Fashion recommendations",
        version="0.1.0",
        description="Personalised recommendations from Feast features and Qdrant vector search.",
        lifespan=lifespan,
    )
    metrics = ApiMetrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/users/{user_id}/recommendations", response_model=RecommendationResponse)
    async def recommendations(
        request: Request,
        user_id: str = Path(..., min_length=1, max_length=256),
        k: int = Query(settings.serve.default_k, ge=1, le=settings.serve.max_k),
    ) -> RecommendationResponse:
        """Top-k items for a user, excluding what they already bought.

        An unknown user gets popular items with ``fallback: true``. ``async`` on purpose: the
        work is about a millisecond of CPU, cheaper in the event loop than a thread hop.
        """
        rec = request.app.state.recommender.recommend(user_id, k)
        metrics.observe_recommendation(rec.timings_ms, rec.fallback, rec.degraded)
        return RecommendationResponse(
            user_id=rec.user_id,
            items=[RecommendedItem(**item) for item in rec.items],
            fallback=rec.fallback,
            degraded=rec.degraded,
            model_version=rec.model_version,
        )

    @app.post("/events", response_model=EventsAccepted)
    def events(batch: EventBatch, request: Request) -> EventsAccepted:
        """Record shop events: logged durably, then visible to the next recommendation.

        An event naming an item the catalogue does not have is refused (404, naming the id),
        and nothing of that batch is recorded.
        """
        recommender = request.app.state.recommender
        unknown = sorted({e.item_id for e in batch.events if not recommender.known_item(e.item_id)})
        if unknown:
            raise HTTPException(status_code=404, detail=f"unknown item_id: {', '.join(unknown)}")
        return EventsAccepted(accepted=recommender.record_events(batch.events))

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        """Prometheus text format: requests, latency per endpoint and stage, fallbacks."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    def health(request: Request) -> JSONResponse:
        """Each dependency's state; 503 when one is down."""
        checks = request.app.state.recommender.health()
        return JSONResponse(checks, status_code=200 if checks["ok"] else 503)

    return app
