"""Job use cases: validate, create (idempotent, with outbox and event), list, get, cancel, retry.

Each function that writes commits at its end, so the job, its first event, its outbox message
and its idempotency key become visible together or not at all; the broker hears of the job only
when the outbox is drained after that commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.db.enums import DatasetStatus, JobStatus
from api.db.models import BaseModelRecord, Dataset, Job
from api.db.repositories import (
    ArtifactRepository,
    BaseModelRepository,
    DatasetRepository,
    IdempotencyRepository,
    JobRepository,
    OutboxRepository,
)
from api.db.repositories.jobs import JobRow
from api.db.types import utcnow
from api.errors import ConflictProblem, NotFoundProblem, ValidationProblem
from api.ids import Prefix
from api.schemas.jobs import Job as JobSchema
from api.schemas.jobs import JobEstimate, JobList, JobValidation
from api.services.cursors import decode_cursor, encode_cursor
from api.services.events import append_event
from api.services.job_status import check_transition
from api.services.outbox import JOB_ENQUEUE
from core.spec import TrainingSpec, estimate, parse_spec, resolve_spec, spec_to_dict, spec_warnings

# Artifacts a job may continue from (``init_from``): a final hypernetwork or a checkpoint.
INIT_FROM_KINDS = frozenset({"hypernetwork", "checkpoint"})


class IdempotencyKeyReusedError(ValidationProblem):
    """The Idempotency-Key was first used with a different request body."""

    code = "idempotency_key_reused"


@dataclass(frozen=True)
class PreparedJob:
    """A spec checked against the tenant's data: its dataset, base model and resolved form."""

    spec: TrainingSpec
    resolved: TrainingSpec
    dataset: Dataset
    model: BaseModelRecord

    def resolved_dict(self) -> dict[str, Any]:
        """The resolved spec as stored, naming the base model by its id."""
        data = spec_to_dict(self.resolved)
        data["base_model"] = self.model.id
        return data


@dataclass(frozen=True)
class CreatedJob:
    """The response body of ``POST /v1/jobs`` and whether it is a replay of an earlier one."""

    body: dict[str, Any]
    replayed: bool


def request_hash(body: Any) -> str:
    """SHA-256 of the body's canonical JSON (sorted keys, no spaces), so key order does not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def prepare_job(session: Session, tenant_id: str, body: Any) -> PreparedJob:
    """Parse the spec and check its references (dataset ready, model registered, init_from artifact)."""
    spec = parse_spec(body)
    if not spec.dataset_id:
        raise ValidationProblem("dataset_id is required", code="missing", pointer="/dataset_id")
    if not spec.base_model:
        raise ValidationProblem("base_model is required", code="missing", pointer="/base_model")
    dataset = DatasetRepository(session).get_for_tenant(tenant_id, spec.dataset_id)
    if dataset is None:
        raise ValidationProblem(
            f"no dataset {spec.dataset_id}", code="dataset_not_found", pointer="/dataset_id"
        )
    if dataset.status != DatasetStatus.READY:
        raise ValidationProblem(
            f"dataset {dataset.id} is {dataset.status}, not ready",
            code="dataset_not_ready",
            pointer="/dataset_id",
        )
    model = BaseModelRepository(session).resolve(spec.base_model)
    if model is None:
        raise ValidationProblem(
            f"no base model {spec.base_model!r}; see GET /v1/models",
            code="base_model_not_found",
            pointer="/base_model",
        )
    if spec.init_from is not None:
        artifact = ArtifactRepository(session).get_for_tenant(tenant_id, spec.init_from)
        if artifact is None or artifact.kind not in INIT_FROM_KINDS:
            raise ValidationProblem(
                f"no hypernetwork or checkpoint artifact {spec.init_from}",
                code="init_from_not_found",
                pointer="/init_from",
            )
    return PreparedJob(spec=spec, resolved=resolve_spec(spec, model.arch), dataset=dataset, model=model)


def validate_job(session: Session, tenant_id: str, body: Any) -> JobValidation:
    """The dry run of ``POST /v1/jobs``: resolved spec, warnings and estimate; writes nothing."""
    prepared = prepare_job(session, tenant_id, body)
    return JobValidation(
        resolved_spec=prepared.resolved_dict(),
        warnings=spec_warnings(prepared.resolved),
        estimate=JobEstimate.model_validate(estimate(prepared.spec, prepared.model.arch)),
    )


def _replay(record_hash: str, response: dict[str, Any] | None, body_hash: str) -> CreatedJob:
    if record_hash != body_hash or response is None:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was used with a different request body", pointer="/header/Idempotency-Key"
        )
    return CreatedJob(body=response, replayed=True)


def create_job(
    session: Session, tenant_id: str, *, idempotency_key: str, body: Any, max_attempts: int
) -> CreatedJob:
    """Create and enqueue a job once per Idempotency-Key; the same key and body replay the first answer."""
    body_hash = request_hash(body)
    keys = IdempotencyRepository(session)
    existing = keys.get(tenant_id, idempotency_key)
    if existing is not None:
        return _replay(existing.request_hash, existing.response, body_hash)
    prepared = prepare_job(session, tenant_id, body)
    resolved = prepared.resolved_dict()
    job = JobRepository(session).add(
        Job(
            tenant_id=tenant_id,
            end_user_id=prepared.spec.end_user_id,
            name=prepared.spec.name,
            status=JobStatus.QUEUED.value,
            dataset_id=prepared.dataset.id,
            base_model_id=prepared.model.id,
            spec=body,
            resolved_spec=resolved,
            progress={"step": 0, "total_steps": int(estimate(prepared.spec, prepared.model.arch)["steps"])},
            attempt=0,
            max_attempts=max_attempts,
            metadata_=dict(prepared.spec.metadata),
        )
    )
    append_event(
        session,
        job_id=job.id,
        tenant_id=tenant_id,
        type="job.queued",
        data={"status": "queued", "attempt": 0},
    )
    OutboxRepository(session).add(JOB_ENQUEUE, {"job_id": job.id})
    response = job_to_schema(job).model_dump(mode="json")
    # Last write of the transaction: a concurrent request with the same key waits here on the
    # unique index until this one commits, then finds the key taken and replays it.
    keys.insert_if_absent(
        tenant_id=tenant_id, key=idempotency_key, request_hash=body_hash, job_id=job.id, response=response
    )
    # Whose key is it? (Read back rather than trusting the driver's rowcount for INSERT .. ON CONFLICT.)
    stored = keys.get(tenant_id, idempotency_key)
    if stored is None or stored.job_id != job.id:
        session.rollback()
        winner = keys.get(tenant_id, idempotency_key)
        if winner is None:  # the other request rolled back after all; the client may simply retry
            raise ConflictProblem(
                "a concurrent request with this Idempotency-Key failed; retry", code="job_busy"
            )
        return _replay(winner.request_hash, winner.response, body_hash)
    session.commit()
    return CreatedJob(body=response, replayed=False)


def _get(session: Session, tenant_id: str, job_id: str, *, for_update: bool = False) -> Job:
    job = JobRepository(session).get_for_tenant(tenant_id, job_id, for_update=for_update)
    if job is None:
        raise NotFoundProblem(f"no job {job_id}")
    return job


def get_job(session: Session, tenant_id: str, job_id: str) -> JobSchema:
    """The tenant's job (404 for others')."""
    return job_to_schema(_get(session, tenant_id, job_id))


def get_job_json(session: Session, tenant_id: str, job_id: str) -> bytes:
    """The tenant's job (404 for others') as the JSON body of ``GET /v1/jobs/{id}``.

    The read clients poll, so it is one statement: on a fresh session with a pooled Postgres
    connection of its own it runs in autocommit, which spares the BEGIN and ROLLBACK round trips
    a transaction would cost (the pool restores the isolation level when the connection returns).
    A session joined to an outer transaction (the tests') reads inside that transaction.
    """
    bind = session.get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    row = JobRepository(session).read_for_tenant(tenant_id, job_id)
    if row is None:
        raise NotFoundProblem(f"no job {job_id}")
    schema = job_to_schema(row)
    return schema.__pydantic_serializer__.to_json(schema)


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    after: str | None,
    status: str | None,
    end_user_id: str | None,
) -> JobList:
    """A page of the tenant's jobs, newest first."""
    page = JobRepository(session).list_page(
        tenant_id, limit=limit, after=decode_cursor(after, Prefix.JOB), status=status, end_user_id=end_user_id
    )
    return JobList(
        data=[job_to_schema(j) for j in page.items],
        has_more=page.has_more,
        next_cursor=encode_cursor(page.next_after),
    )


def cancel_job(session: Session, tenant_id: str, job_id: str, *, save_checkpoint: bool) -> JobSchema:
    """Cancel: queued -> cancelled now, running -> cancelling (the worker stops it); idempotent."""
    jobs = JobRepository(session)
    # Postgres: the row lock makes a worker's claim wait for this commit. Elsewhere the
    # compare-and-set can lose to a claim; the loop then handles the job as the worker left it.
    for _ in range(3):
        job = _get(session, tenant_id, job_id, for_update=True)
        status = JobStatus(job.status)
        if status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
            return job_to_schema(job)
        if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise ConflictProblem(f"a {status} job cannot be cancelled", code="job_not_cancellable")
        target = JobStatus.CANCELLED if status == JobStatus.QUEUED else JobStatus.CANCELLING
        check_transition(status, target, code="job_not_cancellable")
        now = utcnow()
        values: dict[str, Any] = {"status": target.value, "cancel_requested": True, "updated_at": now}
        if target == JobStatus.CANCELLED:
            values["finished_at"] = now
        else:
            values["cancel_save_checkpoint"] = save_checkpoint
        if jobs.compare_and_set(job.id, expect_status=[status], values=values):
            if target == JobStatus.CANCELLED:
                append_event(
                    session,
                    job_id=job.id,
                    tenant_id=tenant_id,
                    type="job.cancelled",
                    data={"status": "cancelled"},
                )
            session.commit()
            return job_to_schema(_get(session, tenant_id, job_id))
        session.rollback()
    raise ConflictProblem("the job changed while it was being cancelled; retry", code="job_busy")


def retry_job(session: Session, tenant_id: str, job_id: str, *, max_attempts: int) -> JobSchema:
    """Requeue a failed or cancelled job with a fresh attempt budget; it resumes from its checkpoint."""
    jobs = JobRepository(session)
    job = _get(session, tenant_id, job_id, for_update=True)
    status = JobStatus(job.status)
    if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ConflictProblem(
            f"only failed or cancelled jobs can be retried; this one is {status}", code="job_not_retryable"
        )
    check_transition(status, JobStatus.QUEUED, code="job_not_retryable")
    changed = jobs.compare_and_set(
        job.id,
        expect_status=[status],
        values={
            "status": JobStatus.QUEUED.value,
            "max_attempts": job.attempt + max_attempts,
            "error_code": None,
            "error_message": None,
            "finished_at": None,
            "cancel_requested": False,
            "cancel_save_checkpoint": False,
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": utcnow(),
        },
    )
    if not changed:  # another request retried it first; report the job as it is now
        session.rollback()
        return job_to_schema(_get(session, tenant_id, job_id))
    append_event(
        session,
        job_id=job.id,
        tenant_id=tenant_id,
        type="job.queued",
        data={"status": "queued", "retry": True},
    )
    OutboxRepository(session).add(JOB_ENQUEUE, {"job_id": job.id})
    session.commit()
    return job_to_schema(_get(session, tenant_id, job_id))


def _progress(job: Job | JobRow) -> dict[str, Any]:
    stored = job.progress if isinstance(job.progress, dict) else {}
    total = stored.get("total_steps")
    if total is None:
        total = ((job.resolved_spec or {}).get("training") or {}).get("steps", 0)
    return {
        "step": stored.get("step", 0),
        "total_steps": total,
        "loss": stored.get("loss"),
        "learn_rate": stored.get("learn_rate"),
        "samples_per_second": stored.get("samples_per_second"),
        "eta_seconds": stored.get("eta_seconds"),
    }


def job_to_schema(job: Job | JobRow) -> JobSchema:
    """The contract's job object for a ``Job`` or a ``JobRepository.read_for_tenant`` row."""
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message or job.error_code}
    return JobSchema.model_validate(
        {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "dataset_id": job.dataset_id,
            "base_model": job.base_model_id,
            "spec": job.spec,
            "resolved_spec": job.resolved_spec or {},
            "progress": _progress(job),
            "attempt": job.attempt,
            "resumed_from_step": job.resumed_from_step,
            "error": error,
            "artifacts_url": f"/v1/jobs/{job.id}/artifacts",
            "end_user_id": job.end_user_id,
            "metadata": job.metadata_,
        }
    )
