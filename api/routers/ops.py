"""Operations: liveness, readiness and Prometheus metrics (no authentication, no ``/v1`` prefix)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import DatabaseDep, StorageDep
from api.errors import problem_response, problem_responses
from api.metrics import RedisBroker

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses=problem_responses(503))
def readyz(request: Request, database: DatabaseDep, store: StorageDep) -> Any:
    """The database, the broker (when it is Redis) and the object store are all reachable."""
    checks: dict[str, str] = {}
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    broker: RedisBroker | None = request.app.state.broker
    if broker is None:
        checks["broker"] = "skipped"
    else:
        try:
            broker.ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {type(exc).__name__}"
    try:
        store.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {type(exc).__name__}"
    failing = sorted(name for name, result in checks.items() if result.startswith("error"))
    if failing:
        return problem_response(
            request,
            status=503,
            code="not_ready",
            detail=f"not reachable: {', '.join(failing)}",
            extra={"checks": checks},
        )
    return {"status": "ready", "checks": checks}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
def metrics(request: Request) -> Response:
    """Requests, jobs by status, queue depth, job durations and training throughput."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
