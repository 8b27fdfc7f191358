"""``GET /v1/jobs/{id}``, the route clients poll: its fast paths return what the slow ones do.

The verified-key cache answers on the event loop (no thread, no query); on its own pooled
Postgres connection the read runs in autocommit (no BEGIN/ROLLBACK) and the pool gets the
connection back in its usual transactional mode.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.testclient import TestClient
from sqlalchemy import delete, event
from starlette.requests import Request

from api.app import create_app
from api.db.engine import Database
from api.db.models import BaseModelRecord, Dataset, Job, Tenant
from api.db.repositories import BaseModelRepository, DatasetRepository, JobRepository
from api.deps import get_principal
from api.errors import NotFoundProblem
from api.ids import Prefix, is_valid_id, new_request_id
from api.security import Principal, PrincipalCache
from api.services import jobs as service
from api.services.tenants import authenticate, authenticate_cached, create_tenant, revoke_api_key
from api.settings import Settings
from tests.api.conftest import ApiEnv
from tests.api.jobs_support import new_job, seed


@pytest.fixture()
def cached_client(any_env: ApiEnv) -> Iterator[TestClient]:
    """A second app on the same database and store, with the verified-key cache on (60 s)."""
    settings = any_env.settings.model_copy(update={"auth_cache_seconds": 60.0})
    app = create_app(settings, database=any_env.database, store=any_env.store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_cached_key_reads_the_same_job_and_others_stay_404(
    any_env: ApiEnv, cached_client: TestClient
) -> None:
    s = seed(any_env)
    other = seed(any_env)
    job_id = new_job(any_env, s)
    uncached = any_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers)
    first = cached_client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers)
    second = cached_client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers)
    assert uncached.status_code == first.status_code == second.status_code == 200
    assert first.json() == second.json() == uncached.json()
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    listed = any_env.client.get("/v1/jobs", headers=s.tenant.headers).json()["data"]
    assert [j for j in listed if j["id"] == job_id] == [first.json()]
    for client in (cached_client, any_env.client):
        foreign = client.get(f"/v1/jobs/{job_id}", headers=other.tenant.headers)
        assert foreign.status_code == 404
        assert foreign.headers["content-type"] == "application/problem+json"
        assert foreign.json()["code"] == "not_found" and foreign.json()["request_id"]


def test_the_cache_answers_without_the_database_until_its_ttl(
    any_env: ApiEnv, cached_client: TestClient
) -> None:
    """Revoked after being cached, a key still reads in the caching app (the documented delay)."""
    s = seed(any_env)
    job_id = new_job(any_env, s)
    assert cached_client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers).status_code == 200
    with any_env.session() as session:
        assert revoke_api_key(session, s.tenant.key_id)
    assert cached_client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers).status_code == 200
    refused = any_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers)
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_api_key"


def test_authenticate_cached_knows_only_verified_keys(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    settings = api_env.settings.model_copy(update={"auth_cache_seconds": 60.0})
    cache = PrincipalCache(ttl=60)
    assert authenticate_cached(settings, tenant.key, cache) is None
    assert authenticate_cached(settings, "not-a-key", cache) is None
    with api_env.session() as session:
        principal = authenticate(session, settings, tenant.key, cache)
    assert principal is not None and principal.tenant_id == tenant.id
    assert authenticate_cached(settings, tenant.key, cache) == principal
    wrong = tenant.key[:-1] + ("y" if tenant.key.endswith("x") else "x")  # never the key itself
    assert authenticate_cached(settings, wrong, cache) is None


@pytest.mark.parametrize("ttl", [60.0, 0.0])
def test_concurrent_misses_of_one_key_share_one_lookup(local_env: ApiEnv, ttl: float) -> None:
    """Requests arriving together with an uncached key: one database lookup (cache on), or one each."""
    tenant = local_env.tenant()
    settings = local_env.settings.model_copy(update={"auth_cache_seconds": ttl})
    app = create_app(settings, database=local_env.database, store=local_env.store)
    lookups: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM api_keys" in statement:
            lookups.append(statement)

    async def many() -> list[Principal]:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=tenant.key)
        requests = [Request({"type": "http", "app": app, "headers": [], "state": {}}) for _ in range(8)]
        return await asyncio.gather(*(get_principal(r, credentials) for r in requests))

    event.listen(local_env.database.engine, "before_cursor_execute", count)
    try:
        principals = asyncio.run(many())
    finally:
        event.remove(local_env.database.engine, "before_cursor_execute", count)
    assert {p.tenant_id for p in principals} == {tenant.id}
    assert len(lookups) == (1 if ttl else 8)
    assert app.state.key_lookups == {}


def test_request_ids_are_well_formed_and_distinct() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(is_valid_id(i, Prefix.REQUEST) for i in ids)


@pytest.fixture()
def own_connection_db(pg_url: str) -> Iterator[Database]:
    """Sessions on a one-connection pool of their own (not joined to a test transaction)."""
    database = Database.from_url(pg_url, pool_size=1, max_overflow=0)
    yield database
    database.dispose()


def test_autocommit_read_matches_the_orm_read_and_leaves_the_pool_transactional(
    own_connection_db: Database, pg_url: str
) -> None:
    """Rows committed for the test (autocommit reads see only committed data) and deleted after."""
    settings = Settings(database_url=pg_url, environment="local")
    with own_connection_db.session() as session:
        tenant_id = create_tenant(session, settings, f"poll-{uuid.uuid4().hex[:6]}").tenant.id
        dataset = DatasetRepository(session).add(
            Dataset(tenant_id=tenant_id, name="d", status="ready", storage_prefix=f"tenants/{tenant_id}/d/")
        )
        model = BaseModelRepository(session).add(
            name=f"sd15-{uuid.uuid4().hex[:8]}", arch="sd1", format="diffusers", uri="/m", sha256_short=None
        )
        job = JobRepository(session).add(
            Job(
                tenant_id=tenant_id,
                name="inkwash",
                status="failed",
                dataset_id=dataset.id,
                base_model_id=model.id,
                spec={"name": "inkwash", "training": {"steps": 10}},
                resolved_spec={"training": {"steps": 10}},
                progress={"step": 4, "loss": 0.5},
                attempt=2,
                resumed_from_step=2,
                error_code="cuda_oom",
                error_message="out of memory",
                end_user_id="u1",
                metadata_={"order": "A-17", "名前": "水墨"},
            )
        )
        session.commit()
        job_id, model_id = job.id, model.id
    try:
        with own_connection_db.session() as session:
            expected = service.get_job(session, tenant_id, job_id).model_dump_json().encode()
        with own_connection_db.session() as session:
            assert service.get_job_json(session, tenant_id, job_id) == expected
            dbapi_connection = session.connection().connection.dbapi_connection
            assert dbapi_connection is not None and dbapi_connection.autocommit is True  # no BEGIN sent
        with own_connection_db.session() as session, pytest.raises(NotFoundProblem):
            service.get_job_json(session, "ten_" + "0" * 26, job_id)
        with own_connection_db.engine.connect() as conn:  # the same (only) pooled connection
            dbapi_connection = conn.connection.dbapi_connection
            assert dbapi_connection is not None and dbapi_connection.autocommit is False
            assert conn.get_isolation_level() == "READ COMMITTED"
    finally:
        with own_connection_db.session() as session:
            session.execute(delete(Tenant).where(Tenant.id == tenant_id))  # cascades to the job and dataset
            session.execute(delete(BaseModelRecord).where(BaseModelRecord.id == model_id))
            session.commit()
