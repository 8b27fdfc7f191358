"""Helpers of the job, event, artifact and webhook tests: seed rows, submit specs, act as the worker.

The "worker" helpers write through the same repositories and services the worker uses (claim,
append_event, finish, add_if_absent), so the API is tested against the writes it will really see.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from api.db.enums import DatasetStatus, JobStatus
from api.db.models import Dataset
from api.db.repositories import ArtifactRepository, BaseModelRepository, DatasetRepository, JobRepository
from api.services.events import append_event
from api.storage import tenant_key
from tests.api.conftest import ApiEnv, Tenant

WORKER = "worker-test"


@dataclass(frozen=True)
class Seed:
    """A tenant with a ready dataset and a registered base model."""

    tenant: Tenant
    dataset_id: str
    model_name: str
    model_id: str


def seed(env: ApiEnv, tenant: Tenant | None = None, *, dataset_status: str = DatasetStatus.READY) -> Seed:
    """Create (or reuse) a tenant, one dataset in ``dataset_status`` and a uniquely named sd1 model."""
    tenant = tenant or env.tenant(f"t-{uuid.uuid4().hex[:6]}")
    with env.session() as session:
        dataset = DatasetRepository(session).add(
            Dataset(
                tenant_id=tenant.id,
                name="inkwash",
                status=str(dataset_status),
                image_count=4,
                caption_count=4,
                bytes=1234,
                storage_prefix=f"tenants/{tenant.id}/datasets/x/",
                report={},
            )
        )
        model = BaseModelRepository(session).add(
            name=f"sd15-{uuid.uuid4().hex[:8]}",
            arch="sd1",
            format="diffusers",
            uri="/models/sd15",
            sha256_short=None,
        )
        session.commit()
        return Seed(tenant=tenant, dataset_id=dataset.id, model_name=model.name, model_id=model.id)


def spec(s: Seed, **overrides: Any) -> dict[str, Any]:
    """A small valid spec for the seed's dataset and model."""
    body: dict[str, Any] = {
        "name": "inkwash",
        "dataset_id": s.dataset_id,
        "base_model": s.model_name,
        "training": {"steps": 200, "learn_rate": "5e-6"},
        "checkpoints": {"save_every": 50},
    }
    body.update(overrides)
    return body


def submit(env: ApiEnv, s: Seed, key: str | None = None, **overrides: Any) -> Any:
    """``POST /v1/jobs`` with a fresh (or the given) Idempotency-Key."""
    headers = {**s.tenant.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    return env.client.post("/v1/jobs", json=spec(s, **overrides), headers=headers)


def new_job(env: ApiEnv, s: Seed, **overrides: Any) -> str:
    """Submit a job and return its id (asserting the 202)."""
    response = submit(env, s, **overrides)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


# -- acting as the worker ---------------------------------------------------------------------------


def worker_start(env: ApiEnv, job_id: str, tenant_id: str) -> int:
    """Claim the job (queued -> running) and log ``job.started``; return the attempt (fencing token)."""
    with env.session() as session:
        attempt = JobRepository(session).claim(job_id, WORKER, 60)
        assert attempt is not None
        append_event(
            session,
            job_id=job_id,
            tenant_id=tenant_id,
            type="job.started",
            data={"status": "running", "attempt": attempt},
        )
        session.commit()
        return attempt


def worker_progress(
    env: ApiEnv, job_id: str, tenant_id: str, attempt: int, step: int, total: int = 200
) -> None:
    """Write progress under the lease and log ``job.progress``."""
    progress = {
        "step": step,
        "total_steps": total,
        "loss": 0.1,
        "learn_rate": 5e-6,
        "samples_per_second": 4.0,
    }
    with env.session() as session:
        assert JobRepository(session).update_leased(job_id, attempt, WORKER, progress=progress)
        append_event(session, job_id=job_id, tenant_id=tenant_id, type="job.progress", data=progress)
        session.commit()


def worker_finish(
    env: ApiEnv,
    job_id: str,
    tenant_id: str,
    attempt: int,
    status: str,
    *,
    error: tuple[str, str] | None = None,
) -> None:
    """Finalise under the lease and log the terminal event (as one transaction)."""
    code, message = error or (None, None)
    with env.session() as session:
        assert JobRepository(session).finish(
            job_id, attempt, WORKER, status, error_code=code, error_message=message
        )
        data: dict[str, Any] = {"status": status}
        if code:
            data["error"] = {"code": code, "message": message}
        append_event(session, job_id=job_id, tenant_id=tenant_id, type=f"job.{status}", data=data)
        session.commit()


def run_to(env: ApiEnv, job_id: str, tenant_id: str, status: str) -> None:
    """Drive a queued job to ``status`` the way the worker would."""
    if status == JobStatus.QUEUED:
        return
    attempt = worker_start(env, job_id, tenant_id)
    if status == JobStatus.RUNNING:
        return
    if status == JobStatus.CANCELLING:
        response = env.client.post(f"/v1/jobs/{job_id}/cancel", headers=_headers_of(env, tenant_id))
        assert response.json()["status"] == "cancelling"
        return
    if status == JobStatus.CANCELLED:
        response = env.client.post(f"/v1/jobs/{job_id}/cancel", headers=_headers_of(env, tenant_id))
        assert response.json()["status"] == "cancelling"
    error = ("training_failed", "loss became NaN") if status == JobStatus.FAILED else None
    worker_finish(env, job_id, tenant_id, attempt, status, error=error)


def _headers_of(env: ApiEnv, tenant_id: str) -> dict[str, str]:
    return next(t.headers for t in env.tenants if t.id == tenant_id)


def add_artifact(
    env: ApiEnv,
    job_id: str,
    tenant_id: str,
    data: bytes,
    *,
    kind: str = "hypernetwork",
    name: str = "inkwash.pt",
) -> str:
    """Store bytes and record the artifact, as the worker's uploader does; return its id."""
    digest = hashlib.sha256(data).hexdigest()
    key = tenant_key(tenant_id, "jobs", job_id, "artifacts", digest)
    stored = env.store.put_bytes(key, data, content_type="application/octet-stream")
    with env.session() as session:
        artifact, _ = ArtifactRepository(session).add_if_absent(
            job_id=job_id,
            tenant_id=tenant_id,
            kind=kind,
            name=name,
            step=200,
            bytes=stored.bytes,
            sha256=stored.sha256,
            content_type="application/octet-stream",
            storage_key=key,
        )
        session.commit()
        return artifact.id
