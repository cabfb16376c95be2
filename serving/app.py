"""FastAPI app: personalised recommendations over HTTP.

Run with ``recsys serve`` (uvicorn). The app loads the current model run, the Feast store and
the vector store once at start-up (``lifespan``) and shares them across requests. ``/`` serves
the web console (``serving/console``: plain HTML, CSS and JavaScript over the JSON routes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import torch
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictBool, StringConstraints
from threadpoolctl import threadpool_limits

from models.context import ItemFilters
from models.sources import REGISTRY
from recsys.core.settings import Settings, get_settings
from serving.console_data import DATA_DOCS_URL, docs_file
from serving.events import Event, EventsNotApplied
from serving.metrics import ApiMetrics, MetricsMiddleware
from serving.recommender import Recommender
from serving.security import AUTH_ERRORS, TOO_LARGE, AccessControl, BodyLimitMiddleware

log = logging.getLogger(__name__)

#: An id or a label in a request: bounded, so no request makes the API hold or log megabytes.
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None = None
    category: str | None = None
    colour: str | None = None
    price: float | None = None
    score: float = Field(
        description="Ranker score (higher is better); popularity share or "
        "rule confidence on the item and popular endpoints."
    )
    rank: int = Field(description="1 = best.")
    reasons: list[str] = Field(description="Why the item was proposed.")
    sources: list[str] = Field(
        default_factory=list,
        description="Candidate sources that proposed it (built in: "
        + ", ".join(REGISTRY)
        + "; `GET /health` lists the enabled ones).",
    )


class BoughtTogetherItem(RecommendedItem):
    confidence: float = Field(description="Share of the item's baskets that also hold this one.")
    lift: float = Field(description="Confidence over this item's overall basket share.")
    support: float = Field(description="Share of all baskets holding both.")


class SessionRequest(BaseModel):
    """A visit: what was browsed, newest first, and optional context."""

    session_items: list[Name] = Field(default_factory=list, max_length=200,
                                      examples=[["0108775015", "0110065001"]])  # fmt: skip
    user_id: Name | None = Field(
        default=None,
        description="A known shopper: their current visit in the online store (views posted "
        "to /events) is merged in after session_items.",
    )
    hide_seen: StrictBool = Field(
        default=True,
        description="Leave the visit's items out (a shop page); false lets them come back "
        "(next-click prediction: going back to an item is a common next step).",
    )
    age_bucket: Name | None = Field(default=None, examples=["25-34"])
    k: int = Field(default=10, ge=1, le=100)
    category: Name | None = None
    department: Name | None = None
    max_price: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    in_stock: StrictBool | None = None


class ErrorDetail(BaseModel):
    detail: str = Field(description="What was wrong, naming the id or field.")


#: Error answers, documented on the routes that give them.
UNKNOWN_ITEM = {404: {"model": ErrorDetail, "description": "Unknown item id (named)."}}
BAD_BODY = {400: {"model": ErrorDetail, "description": "The body is not JSON (or not UTF-8)."},
            **TOO_LARGE}  # fmt: skip
DEPENDENCY_DOWN = {503: {"description": "A dependency is down (each one's state in the body)."}}
EVENTS_PENDING = {503: {"model": ErrorDetail, "description": "The online store failed: the "
                        "events are logged and applied once it answers (retry with the same "
                        "event_id: it is acknowledged, not applied twice)."}}  # fmt: skip


class ItemListResponse(BaseModel):
    item_id: str | None = None
    items: list[RecommendedItem]
    model_version: str
    method: str | None = None


class BoughtTogetherResponse(BaseModel):
    item_id: str
    items: list[BoughtTogetherItem]
    model_version: str


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=1000)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events acknowledged (duplicates included).")
    duplicates: int = Field(
        default=0, description="Of those, retries of an event_id already applied (skipped)."
    )


class RecommendationResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    fallback: bool = Field(
        description="True when nothing is known of the visitor: the anonymous answer is shown."
    )
    degraded: bool = Field(
        default=False, description="True when a dependency failed: the remaining sources answered."
    )
    model_version: str


# --------------------------------------------------------------------------- the web console
#: The console's static files (``/`` serves its page): shipped as package data of ``serving``.
CONSOLE_DIR = FilePath(__file__).with_name("console")
#: The console page fetches only from this origin: no CDN, no inline script or style.
CONSOLE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")  # fmt: skip


class CatalogueItem(BaseModel):
    """A catalogue item as the console shows it (its served run's catalogue)."""

    item_id: str
    title: str | None = None
    category: str | None = None
    colour: str | None = None
    department: str | None = None
    price: float | None = None
    in_stock: bool | None = Field(default=None, description="None: not in the served catalogue.")
    purchases: int | None = Field(
        default=None, description="Purchases in the data the served run was fitted on."
    )
    recent_purchases: int | None = Field(
        default=None, description="Of those, in the recent window of the popularity source."
    )


class CataloguePage(BaseModel):
    total: int = Field(description="Items that match (this page is offset:offset + limit).")
    offset: int
    items: list[CatalogueItem] = Field(description="Most bought first.")
    facets: dict[str, list[str]] = Field(
        description="Values the filters can take: category, department, colour."
    )
    model_version: str


class UserHistory(BaseModel):
    user_id: str
    purchases: list[CatalogueItem] = Field(
        description="Bought, newest first (posted purchases in front of the batch history)."
    )
    recent_views: list[CatalogueItem] = Field(description="Viewed recently, newest first.")
    visit: list[str] = Field(description="Items of the visit in progress, newest first.")
    last_event_at: str | None = Field(description="When their activity row was last written.")
    profile: dict[str, str | float | None] = Field(description="Their profile features.")
    model_version: str


class ExampleUser(BaseModel):
    user_id: str
    purchases: float | None = None
    spend: float | None = None
    fav_category: str | None = None
    age_bucket: str | None = None


class UserList(BaseModel):
    users: list[ExampleUser] = Field(description="Most purchases first.")


class AliasMove(BaseModel):
    collection: str
    run_id: str | None = None
    at: str | None = Field(default=None, description="When the alias moved there (UTC).")
    current: bool
    exists: bool = Field(description="False once `recsys index` pruned the collection.")
    rollback_command: str | None = Field(
        default=None, description="The command that would point the alias back here (shown, "
        "never run by the API)."
    )  # fmt: skip


class AliasHistory(BaseModel):
    alias: str
    current: str | None = None
    serving: str | None = Field(default=None, description="The collection this API searches.")
    history: list[AliasMove] = Field(description="Newest first.")
    rollback_default: str | None = None
    rollback_default_target: str | None = None
    error: str | None = None


class ValidationTable(BaseModel):
    table: str
    success: bool
    validated_at: str | None = None
    expectations: int | None = None
    passed: int | None = None
    failed: int | None = None
    rows_valid: int | None = None
    rows_quarantined: int | None = None
    page: str | None = Field(default=None, description="Its page in the Data Docs.")


class ValidationSummary(BaseModel):
    validated_at: str | None = None
    success: bool
    tables: list[ValidationTable]
    data_docs: str | None = Field(default=None, description="The Data Docs' URL on this API.")


class EvaluationRow(BaseModel):
    model: str
    metrics: dict[str, float | None]
    users: int | None = None
    error: str | None = None


class EvaluationSummary(BaseModel):
    created_at: str | None = None
    split: str | None = None
    events: str | None = None
    cutoff: str | None = None
    eval_users: int | None = None
    columns: list[str]
    rows: list[EvaluationRow]
    served_run: str | None = None
    stale: bool = Field(description="It scored another run than the one served.")
    top10_source_share: dict[str, float]
    report: str


class ModelOverview(BaseModel):
    model_version: str = Field(description="The run this API serves.")
    artifacts_current: str | None = Field(description="The run artifacts/current names.")
    run: dict[str, Any] = Field(description="The served run's manifest: data, metrics, "
                                "pipelines.")  # fmt: skip
    sources: list[str]
    session_sources: list[str]
    item2vec_run: str | None = None
    evaluation: EvaluationSummary | None = Field(
        description="reports/evaluation/evaluation.json (`recsys evaluate`), if any."
    )
    validation: ValidationSummary | None = Field(description="The last `recsys validate`.")
    aliases: AliasHistory


UNKNOWN_USER = {404: {"model": ErrorDetail, "description": "Unknown user id (named)."}}
FEATURES_DOWN = {503: {"model": ErrorDetail, "description": "The online store failed."}}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with single_threaded_kernels():
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming the field; the rejected input is echoed JSON-safe (a NaN or Infinity
        in the body is not valid JSON, and once turned this answer into a 500)."""
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, 422)

    @app.exception_handler(EventsNotApplied)
    async def not_applied(request: Request, exc: EventsNotApplied) -> JSONResponse:
        """503: the events are logged and will be applied; a retry with the same event_id is
        acknowledged as a duplicate, never applied twice."""
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": "1"})

    app.state.metrics = metrics = ApiMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.serve.max_body_bytes)
    if settings.serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.serve.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    access = AccessControl(settings.serve)
    reads = [Depends(access("read"))]

    def answer(rec: Any) -> Response:
        """A recommendation answer, counted in the metrics."""
        metrics.observe_recommendation(rec.timings_ms, rec.fallback, rec.degraded)
        return _json(RecommendationResponse.model_validate(rec, from_attributes=True))

    max_k = settings.serve.max_k

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=RecommendationResponse,
        dependencies=reads,
        responses=AUTH_ERRORS,
    )
    async def recommendations(
        request: Request,
        user_id: str = Path(..., min_length=1, max_length=256),
        k: int = Query(settings.serve.default_k, ge=1, le=max_k),
        category: str | None = Query(None, max_length=256, examples=["Dresses"]),
        department: str | None = Query(None, max_length=256),
        max_price: float | None = Query(None, gt=0),
        in_stock: bool | None = Query(None),
    ) -> Response:
        """Top-k items for a user: every candidate source, the ranker, then business rules.

        Already-bought items are excluded; the filters are pushed into the vector search.
        An unknown user gets the anonymous visitor's answer with ``fallback: true``. ``async``
        on purpose: the work is a few milliseconds of CPU, cheaper in the event loop than a
        thread hop.
        """
        filters = ItemFilters(category, department, max_price, in_stock)
        rec = request.app.state.recommender.recommend(user_id, k, filters)
        return answer(rec)

    @app.post(
        "/recommendations",
        response_model=RecommendationResponse,
        dependencies=reads,
        responses={**AUTH_ERRORS, **BAD_BODY},
    )
    async def session_recommendations(body: SessionRequest, request: Request) -> Response:
        """What this visit will look at next: the session pipeline (sequential rules, session
        kNN, the linear session model, ... and its ranker) over the items browsed, merged with
        a known shopper's current visit; with nothing browsed, popular items for the context
        (``fallback: true``). Unknown item ids in the session are ignored."""
        filters = ItemFilters(body.category, body.department, body.max_price, body.in_stock,
                              body.hide_seen)  # fmt: skip
        rec = request.app.state.recommender.recommend_session(
            body.session_items, body.k, filters, body.age_bucket, body.user_id
        )
        return answer(rec)

    @app.get(
        "/items/{item_id}/similar",
        response_model=ItemListResponse,
        dependencies=reads,
        responses={**UNKNOWN_ITEM, **AUTH_ERRORS},
    )
    async def similar(
        request: Request,
        item_id: str = Path(..., min_length=1, max_length=256),
        method: Literal["behaviour", "sessions", "content", "hybrid"] = Query("hybrid"),
        k: int = Query(settings.serve.default_k, ge=1, le=max_k),
    ) -> Response:
        """Items like this one: bought by the same shoppers (behaviour), viewed next in the
        same browsing sessions (sessions: the session pipeline, else the newest `recsys
        item2vec` run), close in description
        or attributes (content), or all of these fused by reciprocal rank (hybrid). An item
        nobody has bought yet answers from sessions, then content (``method`` says what was
        used)."""
        recommender = request.app.state.recommender
        _require_items(recommender, [item_id])
        used, items = recommender.similar(item_id, k, method)
        version = recommender.model_version
        return _json(ItemListResponse(item_id=item_id, items=items, model_version=version,
                                      method=used))  # fmt: skip

    @app.get(
        "/items/{item_id}/bought-together",
        response_model=BoughtTogetherResponse,
        dependencies=reads,
        responses={**UNKNOWN_ITEM, **AUTH_ERRORS},
    )
    async def bought_together(
        request: Request,
        item_id: str = Path(..., min_length=1, max_length=256),
        k: int = Query(settings.serve.default_k, ge=1, le=max_k),
    ) -> Response:
        """Association rules mined from baskets: support, confidence and lift per item."""
        recommender = request.app.state.recommender
        _require_items(recommender, [item_id])
        items = recommender.bought_together(item_id, k)
        version = recommender.model_version
        return _json(BoughtTogetherResponse(item_id=item_id, items=items, model_version=version))

    @app.get("/popular", response_model=ItemListResponse, dependencies=reads, responses=AUTH_ERRORS)
    async def popular(
        request: Request,
        window: Literal["7d", "30d", "all"] = Query("7d"),
        category: str | None = Query(None, max_length=256),
        k: int = Query(settings.serve.default_k, ge=1, le=max_k),
    ) -> Response:
        """The most bought items over the window, overall or in one category."""
        recommender = request.app.state.recommender
        items = recommender.popular(k, window, category)
        return _json(ItemListResponse(items=items, model_version=recommender.model_version))

    @app.post(
        "/events",
        response_model=EventsAccepted,
        dependencies=[Depends(access("write"))],
        responses={**UNKNOWN_ITEM, **AUTH_ERRORS, **BAD_BODY, **EVENTS_PENDING},
    )
    def events(batch: EventBatch, request: Request) -> EventsAccepted:
        """Record shop events: logged durably, then visible to the next recommendation.

        An event naming an item the catalogue does not have is refused (404, naming the id),
        and nothing of that batch is recorded.
        """
        recommender = request.app.state.recommender
        _require_items(recommender, [e.item_id for e in batch.events])
        accepted, duplicates = recommender.record_events(batch.events)
        return EventsAccepted(accepted=accepted, duplicates=duplicates)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(access("admin"))])
    def prometheus() -> Response:
        """Prometheus text format: requests, latency per endpoint and stage, fallbacks."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", responses=DEPENDENCY_DOWN)
    def health(request: Request) -> JSONResponse:
        """Each dependency's state; 503 when one is down."""
        checks = request.app.state.recommender.health()
        return JSONResponse(checks, status_code=200 if checks["ok"] else 503)

    _console_routes(app, reads, max_k, settings.reports_dir / "data_docs")
    return app


def _console_routes(app: FastAPI, reads: list[Any], max_k: int, data_docs: FilePath) -> None:
    """The web console (``/``) and the read-only JSON it needs beyond the recommendation
    routes: catalogue, shoppers' history, the served model. The page and its files are public
    (code, no data); the data routes, the Data Docs included, take the read scope like every
    other read route."""

    @app.get("/items", response_model=CataloguePage, dependencies=reads, responses=AUTH_ERRORS)
    def catalogue(
        request: Request,
        q: str | None = Query(None, max_length=256, description="Part of a title or an id."),
        category: str | None = Query(None, max_length=256),
        department: str | None = Query(None, max_length=256),
        max_price: float | None = Query(None, gt=0),
        in_stock: bool | None = Query(None),
        limit: int = Query(24, ge=1, le=max_k),
        offset: int = Query(0, ge=0, le=10_000_000),
    ) -> Response:
        """Browse or search the served catalogue, most bought first, with the recommendation
        routes' filters (the same matching); ``facets`` lists the filter values."""
        recommender = request.app.state.recommender
        filters = ItemFilters(category, department, max_price, in_stock)
        total, items = recommender.catalogue(q, filters, limit, offset)
        return _json(CataloguePage(total=total, offset=offset, items=items,
                                   facets=recommender.facets(),
                                   model_version=recommender.model_version))  # fmt: skip

    @app.get(
        "/items/{item_id}",
        response_model=CatalogueItem,
        dependencies=reads,
        responses={**UNKNOWN_ITEM, **AUTH_ERRORS},
    )
    async def item(request: Request, item_id: str = Path(..., min_length=1, max_length=256)
                   ) -> Response:  # fmt: skip
        """One catalogue item: title, category, colour, department, price, stock, purchases."""
        recommender = request.app.state.recommender
        _require_items(recommender, [item_id])
        return _json(CatalogueItem.model_validate(recommender.item_details(item_id)))

    @app.get("/users", response_model=UserList, dependencies=reads, responses=AUTH_ERRORS)
    def users(request: Request, limit: int = Query(12, ge=1, le=100)) -> Response:
        """Example shoppers to look at: those with the most purchases in the feature table."""
        found = request.app.state.recommender.example_users(limit)
        return _json(UserList(users=found))

    @app.get(
        "/users/{user_id}/history",
        response_model=UserHistory,
        dependencies=reads,
        responses={**UNKNOWN_USER, **FEATURES_DOWN, **AUTH_ERRORS},
    )
    def history(
        request: Request,
        user_id: str = Path(..., min_length=1, max_length=256),
        limit: int = Query(50, ge=1, le=200, description="Items per list."),
    ) -> Response:
        """What the recommendations know of a shopper, newest first: purchases, recent views,
        the visit in progress and profile features (the online store's row). A thread, not
        the event loop: a slow store must not hold up the other requests."""
        recommender = request.app.state.recommender
        try:
            found = recommender.history(user_id, limit)
        except Exception as exc:
            log.warning("history of %s: online store failed (%s: %s)", user_id,
                        type(exc).__name__, exc)  # fmt: skip
            raise HTTPException(503, "the online feature store failed; retry shortly") from exc
        if found is None:
            raise HTTPException(404, f"unknown user_id: {user_id}")
        return _json(UserHistory(**found, model_version=recommender.model_version))

    @app.get("/model", response_model=ModelOverview, dependencies=reads, responses=AUTH_ERRORS)
    async def model(request: Request) -> Response:
        """The served run: its manifest (data, metrics, pipelines), the last `recsys evaluate`
        and `recsys validate`, and the collection alias's history with the command that would
        roll back to each earlier collection (shown, not run: moving the alias is `recsys
        rollback`'s job). ``async``: in the event loop, like the recommendation routes, so
        that switching to a run the alias moved to happens on one thread only."""
        return _json(ModelOverview.model_validate(request.app.state.recommender.overview()))

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        """The console page (hash routes: ``#/user/ID``, ``#/item/ID``, ``#/session``,
        ``#/model``)."""
        headers = {"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-cache"}
        return FileResponse(CONSOLE_DIR / "index.html", headers=headers)

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR), name="console")

    @app.get(DATA_DOCS_URL.rstrip("/"), include_in_schema=False, dependencies=reads)
    def docs_root() -> RedirectResponse:
        """To the folder URL, so that the pages' relative links resolve below it."""
        return RedirectResponse(DATA_DOCS_URL)

    @app.get(DATA_DOCS_URL + "{path:path}", include_in_schema=False, dependencies=reads)
    def data_docs_file(path: str) -> FileResponse:
        """The Great Expectations Data Docs of the last ``recsys validate``, read-only: files
        under ``reports/data_docs`` only (no listing, nothing outside it)."""
        found = docs_file(data_docs, path)
        if found is None:
            raise HTTPException(404, "no such Data Docs page (run `recsys validate`)")
        return FileResponse(found)


@contextmanager
def single_threaded_kernels() -> Iterator[None]:
    """torch's and the BLAS's kernels on one thread while the app serves, restored after.

    A request is a tiny forward pass and a few small products: intra-op threads only add
    hand-offs, and every uvicorn worker is its own process, so N workers with a thread per
    core each would oversubscribe the cores. Concurrency comes from requests and workers.
    Set here, in each worker's start-up (``recsys serve --workers N`` spawns them), and
    restored at shutdown (an app in a test process leaves the process as it was).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


def _json(body: BaseModel) -> Response:
    """The validated model serialised once, by pydantic-core.

    Returning the model itself makes FastAPI dump it to a dict, validate that against
    ``response_model`` again and encode it with ``jsonable_encoder`` + ``json.dumps``: three
    passes, ~0.5 ms for ten items. ``response_model`` stays on each route for the OpenAPI docs.
    """
    return Response(body.model_dump_json(), media_type="application/json")


def _require_items(recommender: Recommender, item_ids: list[str]) -> None:
    """404 naming every id of ``item_ids`` that the catalogue does not have."""
    unknown = sorted({i for i in item_ids if not recommender.known_item(i)})
    if unknown:
        raise HTTPException(status_code=404, detail=f"unknown item_id: {', '.join(unknown)}")


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("nan", "inf"): JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
