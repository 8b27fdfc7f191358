"""Cancel and retry over HTTP: every starting status, the resulting status or 409, and side effects."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from api.db.models import JobEvent, OutboxMessage
from api.db.repositories import JobRepository
from tests.api.conftest import ApiEnv
from tests.api.jobs_support import WORKER, new_job, run_to, seed, worker_finish, worker_start

STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
# (start, action) -> resulting status, or the 409 problem code.
EXPECTED: dict[tuple[str, str], str] = {
    ("queued", "cancel"): "cancelled",
    ("running", "cancel"): "cancelling",
    ("cancelling", "cancel"): "cancelling",
    ("cancelled", "cancel"): "cancelled",
    ("succeeded", "cancel"): "409 job_not_cancellable",
    ("failed", "cancel"): "409 job_not_cancellable",
    ("queued", "retry"): "409 job_not_retryable",
    ("running", "retry"): "409 job_not_retryable",
    ("cancelling", "retry"): "409 job_not_retryable",
    ("succeeded", "retry"): "409 job_not_retryable",
    ("failed", "retry"): "queued",
    ("cancelled", "retry"): "queued",
}


def _events(env: ApiEnv, job_id: str) -> list[str]:
    with env.session() as session:
        return [
            e.type
            for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        ]


def _enqueues(env: ApiEnv, job_id: str) -> int:
    with env.session() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "job.enqueue")).all()
        return sum(1 for m in rows if m.payload == {"job_id": job_id})


@pytest.mark.parametrize("action", ["cancel", "retry"])
@pytest.mark.parametrize("start", STATUSES)
def test_transition_table(api_env: ApiEnv, start: str, action: str) -> None:
    """Each (status, action) pair ends in the contract's status, or 409 with a stable code and no change."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    run_to(api_env, job_id, s.tenant.id, start)
    events_before, enqueues_before = _events(api_env, job_id), _enqueues(api_env, job_id)
    response = api_env.client.post(f"/v1/jobs/{job_id}/{action}", headers=s.tenant.headers)
    expected = EXPECTED[(start, action)]
    if expected.startswith("409"):
        assert response.status_code == 409, response.text
        assert response.json()["code"] == expected.split()[1]
        assert api_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers).json()["status"] == start
        assert _events(api_env, job_id) == events_before
        return
    assert response.status_code == 200, response.text
    assert response.json()["status"] == expected
    new_events = _events(api_env, job_id)[len(events_before) :]
    if (start, expected) == ("queued", "cancelled"):
        assert new_events == ["job.cancelled"]
        assert response.json()["finished_at"] is not None
    elif expected == "queued":
        assert new_events == ["job.queued"]
        assert _enqueues(api_env, job_id) == enqueues_before + 1
        assert response.json()["error"] is None and response.json()["finished_at"] is None
    else:
        assert new_events == []  # cancelling and repeats write no event


def test_cancel_running_passes_save_checkpoint_to_the_worker(any_env: ApiEnv) -> None:
    """The worker's lease renewal reads the cancellation and its save_checkpoint flag."""
    s = seed(any_env)
    job_id = new_job(any_env, s)
    attempt = worker_start(any_env, job_id, s.tenant.id)
    response = any_env.client.post(
        f"/v1/jobs/{job_id}/cancel", json={"save_checkpoint": True}, headers=s.tenant.headers
    )
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    with any_env.session() as session:
        lease = JobRepository(session).renew_lease(job_id, attempt, WORKER, 60)
        session.commit()
    assert lease is not None and lease.cancel_requested and lease.cancel_save_checkpoint
    worker_finish(any_env, job_id, s.tenant.id, attempt, "cancelled")
    assert any_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers).json()["status"] == "cancelled"


def test_cancelled_queued_job_is_not_claimed(api_env: ApiEnv) -> None:
    """Once cancelled, the enqueue message the broker still holds finds nothing to run."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    assert api_env.client.post(f"/v1/jobs/{job_id}/cancel", headers=s.tenant.headers).status_code == 200
    with api_env.session() as session:
        assert JobRepository(session).claim(job_id, WORKER, 60) is None


def test_retry_gives_a_fresh_attempt_budget(api_env: ApiEnv) -> None:
    """A job that used all its attempts can run again after a retry; attempt keeps counting."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    attempt = 0
    for _ in range(api_env.settings.job_max_attempts):
        with api_env.session() as session:
            claimed = JobRepository(session).claim(job_id, WORKER, 60)
            session.commit()
        assert claimed == attempt + 1
        attempt = claimed
        if attempt < api_env.settings.job_max_attempts:
            with api_env.session() as session:  # lease lost: the reconciler puts it back in the queue
                JobRepository(session).compare_and_set(
                    job_id, expect_status=["running"], values={"status": "queued"}
                )
                session.commit()
    worker_finish(api_env, job_id, s.tenant.id, attempt, "failed", error=("training_failed", "NaN"))
    failed = api_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers).json()
    assert failed["error"] == {"code": "training_failed", "message": "NaN"}
    retried = api_env.client.post(f"/v1/jobs/{job_id}/retry", headers=s.tenant.headers).json()
    assert retried["status"] == "queued" and retried["error"] is None
    with api_env.session() as session:
        assert JobRepository(session).claim(job_id, WORKER, 60) == attempt + 1


@pytest.mark.parametrize("body", [{"save_checkpoint": "maybe"}, {"unknown": True}, [1]])
def test_bad_cancel_bodies_are_422(api_env: ApiEnv, body: Any) -> None:
    """The optional body is checked like any other."""
    s = seed(api_env)
    job_id = new_job(api_env, s)
    response = api_env.client.post(f"/v1/jobs/{job_id}/cancel", json=body, headers=s.tenant.headers)
    assert response.status_code == 422
    assert api_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers).json()["status"] == "queued"
