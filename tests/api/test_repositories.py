"""The repositories other parts build on: leases and fencing, event sequence numbers, the outbox,
idempotency keys, content-addressed artifacts and webhook deliveries (Postgres and SQLite)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from api.db.engine import make_session_factory
from api.db.models import BaseModelRecord, Dataset, Job, Tenant
from api.db.repositories import (
    ArtifactRepository,
    IdempotencyRepository,
    JobRepository,
    OutboxRepository,
    RecordNotFoundError,
    WebhookRepository,
)
from api.db.types import utcnow
from tests.api.conftest import ApiEnv


def _job(session: Session, *, max_attempts: int = 3, status: str = "queued") -> Job:
    tenant = Tenant(name="t")
    model = BaseModelRecord(
        name=f"m-{id(session)}-{utcnow().timestamp()}",
        arch="sd1",
        format="diffusers",
        uri="/m",
        sha256_short=None,
    )
    session.add_all([tenant, model])
    session.flush()
    dataset = Dataset(tenant_id=tenant.id, name="d", status="ready", storage_prefix="p/", report={})
    session.add(dataset)
    session.flush()
    job = Job(
        tenant_id=tenant.id,
        name="j",
        dataset_id=dataset.id,
        base_model_id=model.id,
        spec={},
        max_attempts=max_attempts,
        status=status,
    )
    return JobRepository(session).add(job)


def test_claim_renew_and_finish_are_fenced(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        jobs = JobRepository(session)
        job = _job(session, max_attempts=2)
        now = utcnow()
        assert jobs.claim(job.id, "w1", 30, now=now) == 1
        assert jobs.claim(job.id, "w2", 30, now=now + timedelta(seconds=10)) is None  # lease still held
        lease = jobs.renew_lease(job.id, 1, "w1", 30, now=now + timedelta(seconds=20))
        assert lease is not None and lease.attempt == 1 and lease.cancel_requested is False
        assert jobs.renew_lease(job.id, 1, "w2", 30) is None  # not the owner
        # The lease runs out: another worker takes over with a new fencing token.
        later = now + timedelta(seconds=120)
        assert jobs.claim(job.id, "w2", 30, now=later) == 2
        assert jobs.renew_lease(job.id, 1, "w1", 30, now=later) is None  # the old holder is fenced off
        assert jobs.update_leased(job.id, 1, "w1", progress={"step": 99}) is False
        assert jobs.update_leased(job.id, 2, "w2", progress={"step": 5}, resumed_from_step=4) is True
        assert jobs.finish(job.id, 1, "w1", "succeeded") is False
        assert (
            jobs.finish(job.id, 2, "w2", "failed", error_code="training_failed", error_message="nan") is True
        )
        session.commit()
        row = jobs.get(job.id)
        assert row is not None
        assert (row.status, row.attempt, row.lease_owner, row.progress) == ("failed", 2, None, {"step": 5})
        assert (
            row.error_code == "training_failed" and row.finished_at is not None and row.started_at is not None
        )
        assert row.resumed_from_step == 4


def test_claim_stops_at_max_attempts(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        jobs = JobRepository(session)
        job = _job(session, max_attempts=1)
        now = utcnow()
        assert jobs.claim(job.id, "w1", 5, now=now) == 1
        assert jobs.expired_leases(now=now + timedelta(seconds=60)) == [job.id]
        assert jobs.claim(job.id, "w2", 5, now=now + timedelta(seconds=60)) is None


def test_cancel_flags_reach_the_lease_holder(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        jobs = JobRepository(session)
        job = _job(session)
        assert jobs.claim(job.id, "w1", 30) == 1
        assert jobs.compare_and_set(
            job.id,
            expect_status=["running"],
            values={"status": "cancelling", "cancel_requested": True, "cancel_save_checkpoint": True},
        )
        assert not jobs.compare_and_set(job.id, expect_status=["queued"], values={"status": "cancelled"})
        lease = jobs.renew_lease(job.id, 1, "w1", 30)
        assert lease is not None and lease.cancel_requested and lease.cancel_save_checkpoint
        assert jobs.finish(job.id, 1, "w1", "cancelled")
        assert jobs.get(job.id).status == "cancelled"  # type: ignore[union-attr]


def test_events_get_consecutive_seqs(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        jobs = JobRepository(session)
        job = _job(session)
        seqs = [jobs.append_event(job.id, "job.progress", {"step": i}).seq for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert [e.seq for e in jobs.events_after(job.id, 3)] == [4, 5]
        assert jobs.last_event(job.id).data == {"step": 4}  # type: ignore[union-attr]
        assert jobs.get(job.id).next_seq == 6  # type: ignore[union-attr]
        with pytest.raises(RecordNotFoundError):
            jobs.append_event("job_missing", "job.log", {})


def test_concurrent_appends_never_share_a_seq(pg_engine: Engine) -> None:
    """Two connections appending to one job at once (committed, so each really waits for the other)."""
    factory = make_session_factory(pg_engine)
    with factory() as session:
        job = _job(session)
        session.commit()
        job_id, tenant_id, model_id = job.id, job.tenant_id, job.base_model_id
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(25):
                with factory() as s:
                    JobRepository(s).append_event(job_id, "job.log", {"i": i})
                    s.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with factory() as s:
            assert [e.seq for e in JobRepository(s).events_after(job_id, 0, limit=100)] == list(range(1, 51))
    finally:
        with factory() as s:
            s.execute(delete(Tenant).where(Tenant.id == tenant_id))
            s.execute(delete(BaseModelRecord).where(BaseModelRecord.id == model_id))
            s.commit()


def test_outbox_drains_once(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        outbox = OutboxRepository(session)
        first = outbox.add("job.enqueue", {"job_id": "job_1"})
        second = outbox.add("job.enqueue", {"job_id": "job_2"})
        assert outbox.pending_count() == 2
        assert [m.id for m in outbox.pending(limit=10)] == [first.id, second.id]
        assert outbox.mark_dispatched([first.id]) == 1
        assert outbox.mark_dispatched([first.id]) == 0
        assert [m.id for m in outbox.pending()] == [second.id]
        assert outbox.pending_count() == 1


def test_idempotency_key_is_stored_once(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        job = _job(session)
        keys = IdempotencyRepository(session)
        args = {
            "tenant_id": job.tenant_id,
            "key": "k1",
            "request_hash": "h",
            "job_id": job.id,
            "response": {"a": 1},
        }
        assert keys.insert_if_absent(**args) is True
        assert keys.insert_if_absent(**{**args, "request_hash": "other"}) is False
        stored = keys.get(job.tenant_id, "k1")
        assert stored is not None and stored.request_hash == "h" and stored.response == {"a": 1}


def test_artifacts_are_content_addressed(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        job = _job(session)
        artifacts = ArtifactRepository(session)
        fields = {
            "job_id": job.id,
            "tenant_id": job.tenant_id,
            "kind": "checkpoint",
            "name": "inkwash-500.pt",
            "step": 500,
            "bytes": 10,
            "sha256": "ab" * 32,
            "content_type": "application/octet-stream",
            "storage_key": f"tenants/{job.tenant_id}/jobs/{job.id}/x",
        }
        first, created = artifacts.add_if_absent(**fields)
        again, created_again = artifacts.add_if_absent(**fields)
        assert created and not created_again and first.id == again.id
        assert [a.id for a in artifacts.list_for_job(job.id)] == [first.id]
        assert artifacts.get_for_tenant(job.tenant_id, first.id) is not None
        assert artifacts.get_for_tenant("ten_other", first.id) is None


def test_webhook_deliveries_fan_out_once_and_record_attempts(any_env: ApiEnv) -> None:
    with any_env.session() as session:
        job = _job(session)
        hooks = WebhookRepository(session)
        all_types = hooks.add_endpoint(
            tenant_id=job.tenant_id, url="https://a.example", event_types=[], secret="s"
        )
        only_done = hooks.add_endpoint(
            tenant_id=job.tenant_id, url="https://b.example", event_types=["job.succeeded"], secret="s"
        )
        event = JobRepository(session).append_event(job.id, "job.progress", {})
        targets = hooks.endpoints_for_event(job.tenant_id, "job.progress")
        assert [e.id for e in targets] == [all_types.id]
        ids = [e.id for e in targets]
        assert hooks.add_deliveries(endpoint_ids=ids, event_id=event.id, job_id=job.id) == 1
        assert hooks.add_deliveries(endpoint_ids=ids, event_id=event.id, job_id=job.id) == 0
        (due,) = hooks.due_deliveries(now=utcnow() + timedelta(seconds=1))
        retry_at = utcnow() + timedelta(minutes=1)
        assert hooks.record_attempt(
            due.id, attempt=1, status="pending", response_status=500, error="boom", next_attempt_at=retry_at
        )
        assert not hooks.record_attempt(
            due.id, attempt=1, status="pending", response_status=500, error="twice", next_attempt_at=retry_at
        )
        assert hooks.due_deliveries(now=utcnow()) == []
        assert hooks.get_delivery(due.id).attempt == 1  # type: ignore[union-attr]
        page = hooks.list_deliveries(all_types.id)
        assert [d.id for d in page.items] == [due.id] and page.next_after is None
        assert only_done.id not in ids
