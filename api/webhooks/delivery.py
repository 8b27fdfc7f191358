"""Delivering webhook events: one signed POST per attempt, retried on a schedule lasting over a day.

The worker calls ``deliver_due`` from a periodic task (every few seconds) and whenever it drains a
``webhook.deliver`` outbox message; ``deliver_one`` sends one delivery by id. An attempt runs in
three steps so no database connection is held during the HTTP call: claim (short transaction),
send (the URL re-checked by the SSRF guard and the connection pinned to the checked address),
record (short transaction, compare-and-set on the attempt number, so a duplicate sender cannot
record twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session

from api.db.enums import DeliveryStatus
from api.db.models import Job, JobEvent, WebhookDelivery
from api.db.repositories import JobRepository, WebhookRepository
from api.db.types import utcnow
from api.settings import Settings
from api.webhooks.signing import signature_headers
from api.webhooks.ssrf import Resolver, UnsafeWebhookURLError, check_webhook_url, system_resolver

# Wait after the n-th failed attempt (Standard Webhooks' schedule): 31 h 35 min in all, 8 attempts.
BACKOFF_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
)
MAX_ATTEMPTS = len(BACKOFF_SCHEDULE) + 1
USER_AGENT = "Hyperforge-Webhooks/1"
MAX_ERROR_CHARS = 500
# The status an event implies; other events report the job's status at delivery time.
_EVENT_STATUS = {
    "job.queued": "queued",
    "job.started": "running",
    "job.resumed": "running",
    "job.succeeded": "succeeded",
    "job.failed": "failed",
    "job.cancelled": "cancelled",
}
_PROGRESS_KEYS = ("step", "total_steps", "loss", "learn_rate", "samples_per_second", "eta_seconds")

SessionFactory = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did and what comes next."""

    delivery_id: str
    attempt: int
    status: str  # pending (will retry), succeeded or failed (gave up)
    response_status: int | None
    error: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class _Claimed:
    delivery_id: str
    attempt: int
    url: str
    secret: str
    endpoint_active: bool
    body: bytes


def next_attempt_after(attempt: int, now: datetime) -> datetime | None:
    """When to retry after failed attempt number ``attempt`` (1-based); None once the schedule is spent."""
    if attempt >= MAX_ATTEMPTS:
        return None
    return now + BACKOFF_SCHEDULE[attempt - 1]


def build_payload(event: JobEvent, job: Job) -> dict[str, Any]:
    """The small delivery body: ``{type, job_id, seq, status, progress, links}``."""
    status = _EVENT_STATUS.get(event.type) or str(event.data.get("status") or job.status)
    source = event.data if event.type == "job.progress" else (job.progress or {})
    progress = {k: source.get(k) for k in _PROGRESS_KEYS if source.get(k) is not None}
    base = f"/v1/jobs/{job.id}"
    return {
        "type": event.type,
        "job_id": job.id,
        "seq": event.seq,
        "status": status,
        "progress": progress,
        "links": {"job": base, "events": f"{base}/events", "artifacts": f"{base}/artifacts"},
    }


def _claim(session: Session, delivery: WebhookDelivery, now: datetime, hold: timedelta) -> _Claimed | None:
    """Reserve a due pending delivery (push its next attempt past the send) and snapshot what to send."""
    if delivery.status != DeliveryStatus.PENDING:
        return None
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return None
    webhooks, jobs = WebhookRepository(session), JobRepository(session)
    endpoint = webhooks.get_endpoint(delivery.endpoint_id)
    event = jobs.get_event(delivery.event_id)
    job = jobs.get(delivery.job_id)
    if endpoint is None or event is None or job is None:
        return None
    body = json.dumps(build_payload(event, job), separators=(",", ":")).encode()
    delivery.next_attempt_at = now + hold  # another sweeper skips it while this one sends
    return _Claimed(
        delivery_id=delivery.id,
        attempt=delivery.attempt + 1,
        url=endpoint.url,
        secret=endpoint.secret,
        endpoint_active=endpoint.disabled_at is None,
        body=body,
    )


def _send(
    claimed: _Claimed, *, settings: Settings, client: httpx.Client, resolver: Resolver
) -> tuple[int | None, str | None]:
    """POST the signed body once; return (HTTP status or None, error or None)."""
    if not claimed.endpoint_active:
        return None, "the endpoint was deleted"
    try:
        target = check_webhook_url(
            claimed.url, allow_private=settings.webhook_allow_private, resolver=resolver
        )
    except UnsafeWebhookURLError as exc:
        return None, f"refused: {exc.detail}"
    headers = {
        **signature_headers(claimed.secret, claimed.delivery_id, int(time.time()), claimed.body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": target.host_header(),
    }
    # Dial the address just checked (not a fresh DNS answer); TLS still verifies the URL's host name.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with client.stream(
            "POST", target.pinned_request_url(), content=claimed.body, headers=headers, extensions=extensions
        ) as response:
            code = response.status_code
    except httpx.TimeoutException:
        return None, "timed out"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    if 200 <= code < 300:
        return code, None
    if 300 <= code < 400:
        return code, f"HTTP {code} (redirects are not followed)"
    return code, f"HTTP {code}"


def _record(
    session: Session, claimed: _Claimed, code: int | None, error: str | None, now: datetime
) -> DeliveryOutcome:
    """Store the attempt's outcome and schedule the next one."""
    if error is None:
        status, next_at, delivered = DeliveryStatus.SUCCEEDED.value, None, now
    else:
        next_at = None if not claimed.endpoint_active else next_attempt_after(claimed.attempt, now)
        status = DeliveryStatus.PENDING.value if next_at is not None else DeliveryStatus.FAILED.value
        delivered = None
    WebhookRepository(session).record_attempt(
        claimed.delivery_id,
        attempt=claimed.attempt,
        status=status,
        response_status=code,
        error=error,
        next_attempt_at=next_at,
        delivered_at=delivered,
    )
    session.commit()
    return DeliveryOutcome(claimed.delivery_id, claimed.attempt, status, code, error, next_at)


def _client(settings: Settings) -> httpx.Client:
    # trust_env=False: a proxy from the environment would dial the host itself and undo the pinning.
    return httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False)


def _hold(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.webhook_timeout_seconds + 30)


def deliver_one(
    session_factory: SessionFactory,
    delivery_id: str,
    *,
    settings: Settings,
    client: httpx.Client | None = None,
    resolver: Resolver = system_resolver,
    now: datetime | None = None,
) -> DeliveryOutcome | None:
    """Make the next attempt of one delivery if it is pending and due; None when there was nothing to do."""
    with session_factory() as session:
        delivery = WebhookRepository(session).get_delivery(delivery_id)
        claimed = None if delivery is None else _claim(session, delivery, now or utcnow(), _hold(settings))
        session.commit()
    if claimed is None:
        return None
    own = client is None
    http = client or _client(settings)
    try:
        code, error = _send(claimed, settings=settings, client=http, resolver=resolver)
    finally:
        if own:
            http.close()
    with session_factory() as session:
        return _record(session, claimed, code, error, now or utcnow())


def deliver_due(
    session_factory: SessionFactory,
    *,
    settings: Settings,
    limit: int = 20,
    client: httpx.Client | None = None,
    resolver: Resolver = system_resolver,
    now: datetime | None = None,
) -> list[DeliveryOutcome]:
    """Attempt every due pending delivery (up to ``limit``); safe to run from several workers at once."""
    moment = now or utcnow()
    with session_factory() as session:
        # Postgres: SKIP LOCKED hands each due delivery to one sweeper; the claim outlives the lock.
        due = WebhookRepository(session).due_deliveries(now=moment, limit=limit)
        claims = [c for c in (_claim(session, d, moment, _hold(settings)) for d in due) if c is not None]
        session.commit()
    if not claims:
        return []
    own = client is None
    http = client or _client(settings)
    outcomes = []
    try:
        for claimed in claims:
            code, error = _send(claimed, settings=settings, client=http, resolver=resolver)
            with session_factory() as session:
                outcomes.append(_record(session, claimed, code, error, now or utcnow()))
    finally:
        if own:
            http.close()
    return outcomes
