"""Operations: liveness, readiness and Prometheus metrics (no authentication, no ``/v1`` prefix)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import DatabaseDep, StorageDep
from api.errors import problem_response, problem_responses
from api.metrics import RedisBroker

router = APIRouter(tags=["operations"])


def _probe(check: Callable[[], object]) -> str:
    """``ok``, or ``error: <exception type>`` when ``check`` raises (readiness reports, never fails)."""
    try:
        check()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses=problem_responses(503))
def readyz(request: Request, database: DatabaseDep, store: StorageDep) -> Any:
    """The database, the broker (when it is Redis) and the object store are all reachable."""
    broker: RedisBroker | None = request.app.state.broker
    checks = {
        "database": _probe(database.check),
        "broker": "skipped" if broker is None else _probe(broker.ping),
        "storage": _probe(store.check),
    }
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
