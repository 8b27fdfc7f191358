"""The FastAPI app factory.

``create_app(settings)`` builds the database, the object store, the metrics registry and the
middleware from the settings (or takes a ``database``/``store`` a test or the local-mode runner
built), installs the problem+json handlers and includes every router in ``api.routers.ROUTERS``.
``hyperforge serve`` runs ``create_served_app`` (uvicorn, ``factory=True``) in each server process.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from api.db.engine import Database
from api.errors import document_problems, install_problem_handlers
from api.metrics import HttpMetrics, ServiceCollector, broker_for
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware, configure_logging
from api.routers import ROUTERS
from api.security import PrincipalCache
from api.settings import Settings, get_settings
from api.storage import ObjectStore, build_store
from core import __version__

DESCRIPTION = """\
Train AUTOMATIC1111-compatible Stable Diffusion hypernetworks over HTTP.

Authenticate with `Authorization: Bearer hf_live_...`. Every error is `application/problem+json`
(RFC 9457) with a stable `code`, the `request_id` (also the `X-Request-Id` header) and, for field
problems, `errors: [{pointer, code, detail}]` with JSON pointers. Objects of other tenants are 404.
Lists are newest first with cursor pagination (`limit`, `after` = the previous page's `next_cursor`).
"""

TAGS = [
    {"name": "datasets", "description": "Upload and validate training images and captions."},
    {"name": "models", "description": "Base models jobs can train on."},
    {"name": "jobs", "description": "Training jobs: create (idempotent), validate, follow, cancel, retry."},
    {"name": "events", "description": "Each job's event log: polling and server-sent events."},
    {"name": "artifacts", "description": "Files jobs produce: hypernetworks, checkpoints, samples, logs."},
    {"name": "webhooks", "description": "Signed event deliveries to your endpoints."},
    {"name": "admin", "description": "Operator routes behind the admin token."},
    {"name": "operations", "description": "Health, readiness and metrics."},
]


def create_app(
    settings: Settings | None = None, *, database: Database | None = None, store: ObjectStore | None = None
) -> FastAPI:
    """Build the app; a ``database`` or ``store`` passed in is used as is and not disposed of."""
    settings = settings or get_settings()
    owns_database = database is None
    db = database or Database.from_url(
        settings.effective_database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    object_store = store or build_store(settings)
    broker = broker_for(settings.broker_url)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(db, broker))
    http_metrics = HttpMetrics(registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_database:
            db.dispose()

    app = FastAPI(
        title="Hyperforge",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = db
    app.state.store = object_store
    app.state.broker = broker
    app.state.registry = registry
    app.state.key_cache = PrincipalCache(settings.auth_cache_seconds)
    app.state.key_lookups = {}  # raw key -> asyncio.Lock while it is being verified (api.deps)
    # GET /v1/jobs/{id}, the route clients poll, reads on at most as many threads as the pool
    # keeps connections (anyio's default allows 40): a poll then never waits in a thread for a
    # connection or opens an overflow one (a Postgres backend started and closed again), and
    # fewer threads contend for the GIL with the event loop. Waiters are served in order.
    app.state.poll_limiter = anyio.CapacityLimiter(settings.database_pool_size)
    install_problem_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = document_problems(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Added innermost first: the request id is assigned before the body limit can answer 413.
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_request_bytes,
        limits={("POST", "/v1/datasets"): settings.max_upload_bytes},
    )
    app.add_middleware(RequestContextMiddleware, metrics=http_metrics)
    return app


def create_served_app() -> FastAPI:
    """The app as each server process runs it: logging set up from the settings, then ``gc.freeze()``.

    Uvicorn calls this in every worker (spawned processes do not inherit the parent's logging set-up).
    Everything alive once the app is built (modules, routes, schemas, the pool) lives as long as the
    process; frozen, it is no longer rescanned by each full cyclic collection, which otherwise
    stops every request in flight for 100+ ms every thousand or so requests under load.
    """
    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    gc.collect()  # garbage made while building is freed, not frozen
    gc.freeze()
    return app
