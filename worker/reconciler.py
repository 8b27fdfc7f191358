"""The reconciler: makes the broker agree with the database, which is the source of truth.

Two repairs, each a compare-and-set so any number of reconcilers may run at once:

- A running job whose lease expired (its worker died, or lost the database for longer than the
  lease) goes back to ``queued`` and is re-enqueued; the next run claims it with ``attempt + 1``
  and resumes from the latest checkpoint. A job that used up ``max_attempts`` fails with
  ``max_attempts_exceeded``; a ``cancelling`` job whose worker vanished becomes ``cancelled``.
- A queued job with no message in the broker (Redis flushed or restarted without persistence, a
  publish lost between commit and broker) is re-enqueued. On Redis the queue and the unacked set
  are inspected; on other brokers a job queued longer than ``stale_after`` is re-published (a
  duplicate delivery is harmless: the claim lets one run).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from api.db.engine import Database
from api.db.enums import JobStatus
from api.db.repositories.jobs import JobRepository
from api.db.types import utcnow
from api.services.events import append_event

log = logging.getLogger(__name__)

MAX_ATTEMPTS_CODE = "max_attempts_exceeded"


@dataclass
class ReconcileReport:
    """What one pass did (job ids)."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)


def _release(
    repo: JobRepository, job_id: str, attempt: int, owner: str | None, now: datetime, **values: Any
) -> bool:
    """Apply ``values`` to a leased job only if the lease seen expired (``attempt``, ``owner``) is unchanged.

    A worker that renews in the instant between the read and this write loses the job anyway;
    that is safe (its next fenced write fails and it stops; the re-run resumes from a checkpoint).
    """
    return repo.compare_and_set(
        job_id,
        expect_status=[JobStatus.RUNNING.value, JobStatus.CANCELLING.value],
        values=values,
        attempt=attempt,
        owner=owner,
    )


def reconcile_expired_leases(db: Database, *, now: datetime | None = None) -> ReconcileReport:
    """Re-queue, fail or cancel jobs whose lease ran out; returns what changed (commit per job)."""
    report = ReconcileReport()
    now = now or utcnow()
    with db.session() as session:
        repo = JobRepository(session)
        for job_id in repo.expired_leases(now=now):
            job = repo.get(job_id)
            if job is None:
                continue
            attempt, owner, tenant_id = job.attempt, job.lease_owner, job.tenant_id
            data: dict[str, Any]
            released: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
            if job.status == JobStatus.CANCELLING:
                values = {**released, "status": JobStatus.CANCELLED.value, "finished_at": now}
                event, data, bucket = "job.cancelled", {"status": "cancelled"}, report.cancelled
            elif attempt >= job.max_attempts:
                message = (
                    f"the job's worker stopped renewing its lease on each of its {attempt} attempts "
                    "(crashed, killed or cut off); giving up"
                )
                error = {"code": MAX_ATTEMPTS_CODE, "message": message}
                values = {
                    **released,
                    "status": JobStatus.FAILED.value,
                    "finished_at": now,
                    "error_code": MAX_ATTEMPTS_CODE,
                    "error_message": message,
                }
                event, data, bucket = "job.failed", {"status": "failed", "error": error}, report.failed
            else:
                values = {**released, "status": JobStatus.QUEUED.value, "updated_at": now}
                event, data, bucket = (
                    "job.queued",
                    {"status": "queued", "reason": "lease_expired"},
                    report.requeued,
                )
            if _release(repo, job_id, attempt, owner, now, **values):
                append_event(
                    session, job_id=job_id, tenant_id=tenant_id, type=event, data={**data, "attempt": attempt}
                )
                bucket.append(job_id)
            session.commit()
    return report


def task_id_for(job_id: str, token: str) -> str:
    """The Celery task id of a run of ``job_id``: the job id first, so the broker can be searched."""
    return f"{job_id}:{token}"


def job_id_of_task(task_id: str) -> str | None:
    """The job id a ``task_id_for`` id names, or None for other tasks."""
    job_id, sep, _ = task_id.partition(":")
    return job_id if sep and job_id.startswith("job_") else None


def redis_enqueued_job_ids(client: Any, queues: Iterable[str], *, max_unacked_age: float) -> set[str]:
    """Job ids with a live message in the Redis broker: waiting in a queue, or delivered and unacked
    for less than ``max_unacked_age`` seconds.

    An older unacked message of a job that is still queued is stuck: its worker died before
    claiming (or released the job on shutdown), and Redis would only restore it after the visibility
    timeout, which is set to days. Such a job counts as missing and is re-published.
    """
    found: set[str] = set()

    def _job_of(raw: bytes | str) -> str | None:
        try:
            message = json.loads(raw)
            if isinstance(message, list):  # the unacked hash holds [message, exchange, routing_key]
                message = message[0]
            return job_id_of_task(str(message["headers"]["id"]))
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    for queue in queues:
        for raw in client.lrange(queue, 0, -1):
            job = _job_of(raw)
            if job:
                found.add(job)
    fresh = client.zrangebyscore("unacked_index", time.time() - max_unacked_age, "+inf")
    if fresh:
        for raw in client.hmget("unacked", fresh):
            job = _job_of(raw) if raw is not None else None
            if job:
                found.add(job)
    return found


def republish_lost_queued(
    db: Database,
    publish: Callable[[str], None],
    *,
    in_broker: set[str] | None,
    stale_after: float,
    now: datetime | None = None,
) -> list[str]:
    """Publish queued jobs the broker does not hold (or, when unknown, that waited ``stale_after`` s)."""
    now = now or utcnow()
    # A freshly committed job may not be published yet (the outbox drains it within moments).
    grace = timedelta(seconds=stale_after)
    with db.session() as session:
        repo = JobRepository(session)
        candidates = repo.queued_before(now - grace, limit=500)
        lost = [j for j in candidates if in_broker is None or j not in in_broker]
        for job_id in lost:
            # Touch updated_at so an unknown-broker setup republishes at most once per interval.
            repo.compare_and_set(job_id, expect_status=[JobStatus.QUEUED.value], values={"updated_at": now})
        session.commit()
    for job_id in lost:
        publish(job_id)
    return lost


def reconcile_once(
    db: Database,
    publish: Callable[[str], None],
    *,
    in_broker: Callable[[], set[str] | None],
    stale_after: float,
) -> ReconcileReport:
    """One full pass: expired leases, then queued jobs missing from the broker; publishes after commit."""
    report = reconcile_expired_leases(db)
    for job_id in report.requeued:
        publish(job_id)
    try:
        present = in_broker()
    except Exception as exc:  # the broker is down: publishing would fail too; next pass
        log.warning("cannot inspect the broker (%s); skipping the lost-message check", exc)
        return report
    report.republished = republish_lost_queued(db, publish, in_broker=present, stale_after=stale_after)
    for job_id in report.requeued + report.republished:
        log.info("re-enqueued %s", job_id)
    return report
