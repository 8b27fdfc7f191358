"""Jobs and their event logs, with the compare-and-set writes the worker's leases rely on.

Every state write of a running job is fenced: it names the ``attempt`` (the fencing token) and
the ``owner`` of the lease and changes nothing unless both still match, so a worker that lost its
lease (paused, partitioned, superseded by a re-run) cannot overwrite its successor. Bulk UPDATEs
bypass the session's cache; each helper expires the cached row it changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from sqlalchemy import Row, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from api.db.enums import LIVE_JOB_STATUSES, JobStatus
from api.db.models import Job, JobEvent
from api.db.repositories.base import (
    Page,
    RecordNotFoundError,
    expire_cached,
    is_postgres,
    keyset_page,
    rowcount,
)
from api.db.types import utcnow

_LEASED = (JobStatus.RUNNING.value, JobStatus.CANCELLING.value)

# A ``read_for_tenant`` row: the job object's columns, read by ``Job``'s attribute names.
JobRow: TypeAlias = Row[*tuple[Any, ...]]
_JOBS = Job.__table__
_READ_COLUMNS = (
    "id",
    "name",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "dataset_id",
    "base_model_id",
    "spec",
    "resolved_spec",
    "progress",
    "attempt",
    "resumed_from_step",
    "error_code",
    "error_message",
    "end_user_id",
)
# Table columns rather than ORM attributes: the session runs it as plain Core (cheaper per call).
_READ_STMT = select(*(_JOBS.c[name] for name in _READ_COLUMNS), _JOBS.c["metadata"].label("metadata_")).where(
    _JOBS.c.id == bindparam("job_id"), _JOBS.c.tenant_id == bindparam("tenant_id")
)


@dataclass(frozen=True)
class Lease:
    """A held lease after a claim or renewal, with the cancellation flags read in the same statement."""

    attempt: int
    expires_at: datetime
    cancel_requested: bool
    cancel_save_checkpoint: bool


class JobRepository:
    """Jobs and job events."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- reads -------------------------------------------------------------------------------------
    def add(self, job: Job) -> Job:
        """Insert a job row."""
        self.session.add(job)
        self.session.flush()
        return job

    def get(self, job_id: str) -> Job | None:
        """A job by id, whoever owns it (the worker's view)."""
        return self.session.get(Job, job_id)

    def get_for_tenant(self, tenant_id: str, job_id: str, *, for_update: bool = False) -> Job | None:
        """The tenant's job, or None; ``for_update`` locks the row until commit (Postgres)."""
        stmt = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
        if for_update and is_postgres(self.session):
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt.execution_options(populate_existing=for_update)).first()

    def read_for_tenant(self, tenant_id: str, job_id: str) -> JobRow | None:
        """The columns of the API's job object for the tenant's job, or None; a Core select.

        The route clients poll: no ORM entity or identity map, only the columns the object shows,
        under ``Job``'s attribute names (``base_model_id``, ``metadata_``).
        """
        return self.session.execute(_READ_STMT, {"job_id": job_id, "tenant_id": tenant_id}).first()

    def list_page(
        self,
        tenant_id: str,
        *,
        limit: int = 20,
        after: str | None = None,
        status: str | None = None,
        end_user_id: str | None = None,
    ) -> Page[Job]:
        """The tenant's jobs, newest first, optionally filtered."""
        stmt = select(Job).where(Job.tenant_id == tenant_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        if end_user_id is not None:
            stmt = stmt.where(Job.end_user_id == end_user_id)
        return keyset_page(self.session, stmt, Job.id, limit=limit, after=after)

    def has_live_job_for_dataset(self, dataset_id: str) -> bool:
        """True while a queued, running or cancelling job uses the dataset."""
        stmt = select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(LIVE_JOB_STATUSES)).limit(1)
        return self.session.scalars(stmt).first() is not None

    def count_by_status(self) -> dict[str, int]:
        """Jobs per status, every status present (for /metrics)."""
        counts = {status.value: 0 for status in JobStatus}
        for status, count in self.session.execute(select(Job.status, func.count()).group_by(Job.status)):
            counts[str(status)] = int(count)
        return counts

    def expired_leases(self, *, now: datetime | None = None, limit: int = 100) -> list[str]:
        """Ids of running/cancelling jobs whose lease ran out (their worker is gone or stuck)."""
        stmt = (
            select(Job.id)
            .where(Job.status.in_(_LEASED), Job.lease_expires_at < (now or utcnow()))
            .order_by(Job.lease_expires_at)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def queued_before(self, before: datetime, *, limit: int = 100) -> list[str]:
        """Ids of jobs queued (last touched) before ``before``: candidates the broker may have lost."""
        stmt = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED.value, Job.updated_at < before)
            .order_by(Job.updated_at)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def finished_durations(self, since: datetime, *, limit: int = 10_000) -> list[float]:
        """Seconds from start to finish of jobs finished since ``since`` (for /metrics)."""
        stmt = (
            select(Job.started_at, Job.finished_at)
            .where(Job.finished_at >= since, Job.started_at.is_not(None))
            .limit(limit)
        )
        return [
            (finished - started).total_seconds()
            for started, finished in self.session.execute(stmt)
            if started is not None and finished is not None
        ]

    def running_progress(self) -> list[dict[str, Any]]:
        """The progress objects of running jobs (for steps/s in /metrics)."""
        stmt = select(Job.progress).where(Job.status == JobStatus.RUNNING.value)
        return [p for p in self.session.scalars(stmt) if isinstance(p, dict)]

    # -- compare-and-set writes ---------------------------------------------------------------------
    def compare_and_set(
        self,
        job_id: str,
        *,
        expect_status: Iterable[str],
        values: Mapping[str, Any],
        attempt: int | None = None,
        owner: str | None = None,
    ) -> bool:
        """Apply ``values`` only if the job is in one of ``expect_status`` (and, when given, still
        under lease ``attempt``/``owner``); True when the row changed."""
        conditions = [Job.id == job_id, Job.status.in_(list(expect_status))]
        if attempt is not None:
            conditions.append(Job.attempt == attempt)
        if owner is not None:
            conditions.append(Job.lease_owner == owner)
        stmt = update(Job).where(*conditions).values(**values).execution_options(synchronize_session=False)
        changed = rowcount(self.session.execute(stmt)) == 1
        expire_cached(self.session, Job, job_id)
        return changed

    def claim(
        self, job_id: str, owner: str, lease_seconds: float, *, now: datetime | None = None
    ) -> int | None:
        """Take the job for ``owner``: a queued job, or a running one whose lease expired.

        Increments ``attempt`` (the new fencing token, returned) and sets the lease; None when the
        job is not claimable (another worker has it, it finished, or its attempts are used up).
        """
        now = now or utcnow()
        claimable = or_(
            Job.status == JobStatus.QUEUED.value,
            and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
        )
        stmt = (
            update(Job)
            .where(Job.id == job_id, claimable, Job.attempt < Job.max_attempts)
            .values(
                status=JobStatus.RUNNING.value,
                attempt=Job.attempt + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=func.coalesce(Job.started_at, now),
                finished_at=None,
                updated_at=now,
            )
            .returning(Job.attempt)
            .execution_options(synchronize_session=False)
        )
        attempt = self.session.execute(stmt).scalar_one_or_none()
        expire_cached(self.session, Job, job_id)
        return None if attempt is None else int(attempt)

    def renew_lease(
        self, job_id: str, attempt: int, owner: str, lease_seconds: float, *, now: datetime | None = None
    ) -> Lease | None:
        """Extend a held lease; None when it is no longer held (stop working on the job)."""
        now = now or utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        stmt = (
            update(Job)
            .where(
                Job.id == job_id, Job.attempt == attempt, Job.lease_owner == owner, Job.status.in_(_LEASED)
            )
            .values(lease_expires_at=expires)
            .returning(Job.cancel_requested, Job.cancel_save_checkpoint)
            .execution_options(synchronize_session=False)
        )
        row = self.session.execute(stmt).first()
        expire_cached(self.session, Job, job_id)
        if row is None:
            return None
        return Lease(attempt, expires, bool(row[0]), bool(row[1]))

    def update_leased(self, job_id: str, attempt: int, owner: str, **values: Any) -> bool:
        """Write ``values`` (progress, resumed_from_step ...) only under the held lease."""
        return self.compare_and_set(
            job_id, expect_status=_LEASED, values=values, attempt=attempt, owner=owner
        )

    def finish(
        self,
        job_id: str,
        attempt: int,
        owner: str,
        status: str,
        *,
        error_code: str | None = None,
        error_message: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Move a leased job to a final ``status`` and drop the lease; False when the lease was lost."""
        return self.update_leased(
            job_id,
            attempt,
            owner,
            status=status,
            error_code=error_code,
            error_message=error_message,
            finished_at=now or utcnow(),
            lease_owner=None,
            lease_expires_at=None,
        )

    # -- events -------------------------------------------------------------------------------------
    def append_event(self, job_id: str, type: str, data: Mapping[str, Any] | None = None) -> JobEvent:
        """Append an event with the job's next ``seq``.

        The ``UPDATE ... RETURNING`` of ``next_seq`` locks the job row until commit, so concurrent
        writers of one job get consecutive, unique numbers.
        """
        stmt = (
            update(Job)
            .where(Job.id == job_id)
            .values(next_seq=Job.next_seq + 1)
            .returning(Job.next_seq)
            .execution_options(synchronize_session=False)
        )
        next_seq = self.session.execute(stmt).scalar_one_or_none()
        if next_seq is None:
            raise RecordNotFoundError(f"no job {job_id}")
        expire_cached(self.session, Job, job_id)
        event = JobEvent(job_id=job_id, seq=int(next_seq) - 1, type=type, data=dict(data or {}))
        self.session.add(event)
        self.session.flush()
        return event

    def events_after(self, job_id: str, after_seq: int = 0, *, limit: int = 100) -> list[JobEvent]:
        """Events with ``seq > after_seq``, in order."""
        stmt = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def last_event(self, job_id: str) -> JobEvent | None:
        """The job's latest event."""
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc()).limit(1)
        return self.session.scalars(stmt).first()

    def get_event(self, event_id: str) -> JobEvent | None:
        """An event by id."""
        return self.session.get(JobEvent, event_id)
