"""``/v1/jobs/{id}/events``: the job's event log as JSON pages or a server-sent event stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.db.engine import Database
from api.deps import DatabaseDep, TenantDep
from api.errors import problem_responses as problems
from api.routers.jobs import JobId
from api.schemas.events import JobEventList
from api.services import events as service

router = APIRouter(prefix="/v1/jobs", tags=["events"], responses=problems(401))

SSE_MEDIA_TYPE = "text/event-stream"
MAX_SEQ = 2**31 - 1


def _page(database: Database, tenant_id: str, job_id: str, after: int, limit: int) -> JobEventList:
    with database.session() as session:
        return service.list_events(session, tenant_id=tenant_id, job_id=job_id, after=after, limit=limit)


@router.get(
    "/{job_id}/events",
    summary="List or stream a job's events",
    response_model=JobEventList,
    responses={
        200: {
            "description": "JSON page of events; with `Accept: text/event-stream`, an SSE stream "
            "(`id:` = seq, `event:` = type, `data:` = the event) that ends after the terminal event.",
            "content": {SSE_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **problems(404, 422),
    },
)
async def job_events(
    request: Request,
    job_id: JobId,
    tenant: TenantDep,
    database: DatabaseDep,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Only events with a larger seq.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=service.MAX_EVENTS_PAGE, description="Page size (JSON only).")
    ] = 100,
    last_event_id: Annotated[
        str | None, Header(description="SSE reconnection: resume after this seq.")
    ] = None,
) -> JobEventList | StreamingResponse:
    """The job's events after `after`, oldest first; `Accept: text/event-stream` streams them live."""
    resume = service.parse_last_event_id(last_event_id)
    start = max(after or 0, resume or 0)
    streaming = SSE_MEDIA_TYPE in request.headers.get("accept", "")
    # Also the tenant check (404), done before any byte of a stream is sent.
    page = await run_in_threadpool(
        _page, database, tenant.tenant_id, job_id, start, 1 if streaming else limit
    )
    if not streaming:
        return page
    stream = service.stream_events(database.session, job_id=job_id, after=start)
    return StreamingResponse(
        stream,
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
