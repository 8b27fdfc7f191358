"""Concurrent ``POST /v1/jobs`` with one Idempotency-Key, on real separate Postgres connections.

This test commits for real (the per-test rollback fixture shares one connection, which would
serialise the requests), on the session's migrated database, and deletes what it made.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from api.app import create_app
from api.db.engine import Database
from api.db.models import BaseModelRecord, Job, OutboxMessage, Tenant
from api.services.tenants import create_tenant
from api.settings import Settings
from api.storage import S3ObjectStore
from tests.api import conftest
from tests.api.conftest import ApiEnv
from tests.api.jobs_support import seed, spec

REQUESTS = 6


@pytest.fixture()
def committing_env(pg_url: str, s3_store: S3ObjectStore) -> Iterator[ApiEnv]:
    """The app on a real connection pool (commits are real); its tenants and models are deleted after."""
    settings = Settings(environment="local", database_url=pg_url, auth_cache_seconds=0, broker_url="")
    database = Database.from_url(pg_url, pool_size=REQUESTS + 2, max_overflow=0)
    app = create_app(settings, database=database, store=s3_store)
    env: ApiEnv | None = None
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            env = ApiEnv("postgres-committing", client, database, s3_store, settings)
            yield env
    finally:
        with database.session() as session:
            tenant_ids = [t.id for t in (env.tenants if env else [])]
            job_ids = list(session.scalars(select(Job.id).where(Job.tenant_id.in_(tenant_ids))))
            for job_id in job_ids:
                session.execute(
                    delete(OutboxMessage).where(OutboxMessage.payload["job_id"].as_string() == job_id)
                )
            models = list(session.scalars(select(Job.base_model_id).where(Job.id.in_(job_ids))))
            session.execute(delete(Tenant).where(Tenant.id.in_(tenant_ids)))
            session.execute(delete(BaseModelRecord).where(BaseModelRecord.id.in_(models)))
            session.commit()
        database.dispose()


def test_concurrent_requests_with_one_key_make_one_job(committing_env: ApiEnv) -> None:
    """Requests racing with the same key and body create one job; the others replay it."""
    env = committing_env
    with env.database.session() as session:
        created = create_tenant(session, env.settings, "racer")
    tenant = conftest.Tenant(id=created.tenant.id, key=created.key.secret, key_id=created.key.key.id)
    env.tenants.append(tenant)
    s = seed(env, tenant)
    key = str(uuid.uuid4())
    barrier = threading.Barrier(REQUESTS)

    def post(_: int) -> Any:
        barrier.wait()
        return env.client.post("/v1/jobs", json=spec(s), headers={**tenant.headers, "Idempotency-Key": key})

    with ThreadPoolExecutor(REQUESTS) as pool:
        responses = list(pool.map(post, range(REQUESTS)))
    assert [r.status_code for r in responses] == [202] * REQUESTS, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    with env.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)) == 1
        job_id = responses[0].json()["id"]
        outbox = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.payload["job_id"].as_string() == job_id)
        )
        assert outbox == 1
