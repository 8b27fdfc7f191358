"""The job event log: appending (with webhook fan-out), paging, and the SSE stream.

``append_event`` is what the API and the worker call for every state change, progress tick,
checkpoint, sample and error; it writes the event, one pending webhook delivery per subscribed
endpoint and an outbox message, all in the caller's transaction (the caller commits).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.orm import Session

from api.db.models import JobEvent
from api.db.repositories import JobRepository, OutboxRepository, WebhookRepository
from api.errors import NotFoundProblem
from api.schemas.events import JobEvent as JobEventSchema
from api.schemas.events import JobEventList
from api.services.job_status import TERMINAL_EVENT_TYPES
from api.services.outbox import WEBHOOK_DELIVER

TERMINAL_TYPES: frozenset[str] = frozenset(TERMINAL_EVENT_TYPES.values())
MAX_EVENTS_PAGE = 1000


def append_event(
    session: Session, *, job_id: str, tenant_id: str, type: str, data: Mapping[str, Any] | None = None
) -> JobEvent:
    """Append an event to the job's log and fan it out to the tenant's webhooks; the caller commits."""
    event = JobRepository(session).append_event(job_id, type, data)
    fan_out_event(session, tenant_id=tenant_id, event=event)
    return event


def fan_out_event(session: Session, *, tenant_id: str, event: JobEvent) -> int:
    """One pending delivery per endpoint subscribed to the event's type; return how many endpoints."""
    webhooks = WebhookRepository(session)
    endpoints = webhooks.endpoints_for_event(tenant_id, event.type)
    if not endpoints:
        return 0
    webhooks.add_deliveries(endpoint_ids=[e.id for e in endpoints], event_id=event.id, job_id=event.job_id)
    OutboxRepository(session).add(WEBHOOK_DELIVER, {"event_id": event.id})
    return len(endpoints)


def event_to_schema(event: JobEvent) -> JobEventSchema:
    """The API shape of an event row."""
    return JobEventSchema.model_validate(
        {
            "id": event.id,
            "seq": event.seq,
            "type": event.type,
            "created_at": event.created_at,
            "data": event.data,
        }
    )


def list_events(session: Session, *, tenant_id: str, job_id: str, after: int, limit: int) -> JobEventList:
    """The job's events with ``seq > after``, oldest first (404 for others' jobs)."""
    jobs = JobRepository(session)
    if jobs.get_for_tenant(tenant_id, job_id) is None:
        raise NotFoundProblem(f"no job {job_id}")
    rows = jobs.events_after(job_id, after, limit=limit + 1)
    return JobEventList(data=[event_to_schema(e) for e in rows[:limit]], has_more=len(rows) > limit)


def format_sse(event: JobEventSchema) -> str:
    """One SSE message: ``id:`` the seq, ``event:`` the type, ``data:`` the event as JSON."""
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


@dataclass(frozen=True)
class StreamSettings:
    """Timing of an event stream."""

    poll_seconds: float = 0.5
    heartbeat_seconds: float = 15.0
    batch: int = 100
    retry_ms: int = 2000  # the client's reconnection delay (SSE ``retry:``)


@dataclass(frozen=True)
class _Poll:
    events: list[JobEventSchema]
    has_more: bool
    ended: bool  # the client is past the job's terminal event: nothing more will come


def _poll(open_session: Callable[[], Any], job_id: str, after: int, batch: int) -> _Poll:
    """One short read in a fresh session (never held across the stream)."""
    with open_session() as session:
        jobs = JobRepository(session)
        rows = jobs.events_after(job_id, after, limit=batch + 1)
        events = [event_to_schema(e) for e in rows[:batch]]
        ended = False
        if not events:
            last = jobs.last_event(job_id)
            # Ended only when the log's latest event is terminal (a retried job keeps going).
            ended = last is not None and last.type in TERMINAL_TYPES and last.seq <= after
        return _Poll(events=events, has_more=len(rows) > batch, ended=ended)


async def stream_events(
    open_session: Callable[[], Any], *, job_id: str, after: int, settings: StreamSettings | None = None
) -> AsyncIterator[str]:
    """SSE text for the job's events after ``after``, ending after the terminal event, with heartbeats.

    ``open_session`` returns a context manager yielding a fresh ``Session``; each poll opens and
    closes one in a worker thread so the stream holds no connection while it waits.
    """
    cfg = settings or StreamSettings()
    yield f"retry: {cfg.retry_ms}\n\n"
    last_sent = anyio.current_time()
    while True:
        poll = await anyio.to_thread.run_sync(_poll, open_session, job_id, after, cfg.batch)
        for event in poll.events:
            yield format_sse(event)
            after = event.seq
            last_sent = anyio.current_time()
        if poll.ended or (poll.events and not poll.has_more and poll.events[-1].type in TERMINAL_TYPES):
            return
        if poll.has_more:
            continue
        if anyio.current_time() - last_sent >= cfg.heartbeat_seconds:
            yield ": heartbeat\n\n"
            last_sent = anyio.current_time()
        await anyio.sleep(cfg.poll_seconds)


def parse_last_event_id(value: str | None) -> int | None:
    """The seq in a ``Last-Event-ID`` header (None when absent or not a non-negative integer)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())
