"""Fixtures for API tests: the app on a migrated Postgres with per-test rollback and S3 on moto,
and the same app in local mode (SQLite + filesystem store).

``api_env`` is the app on Postgres + S3; ``local_env`` the app in local mode; ``any_env`` is
parametrised over both (use it for tests that must hold in each mode). Each env has a TestClient
(httpx), the ``Database`` the app uses, the object store, the settings, and ``tenant()`` which
creates a tenant and returns its id, API key and auth headers.

Postgres: the session creates its own database (``hf_api_<random>``) from ``database_url``, runs
the Alembic migrations on it and drops it at the end, so parallel suites never share tables. Each
test runs inside one outer transaction on one connection; sessions join it with SAVEPOINTs
(SQLAlchemy's "join an external transaction" recipe), and the transaction is rolled back after
the test.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.db.engine import Database, make_engine
from api.db.migrate import upgrade
from api.services.tenants import create_tenant
from api.settings import Settings
from api.storage import FilesystemObjectStore, ObjectStore, S3ObjectStore

ADMIN_TOKEN = "admin-test-token"


@dataclass
class Tenant:
    """A tenant made for a test, with its API key."""

    id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization`` header for this tenant."""
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class ApiEnv:
    """One app under test and what it runs on."""

    mode: str
    client: TestClient
    database: Database
    store: ObjectStore
    settings: Settings
    tenants: list[Tenant] = field(default_factory=list)

    def session(self) -> Session:
        """A session on the app's database (joined to the test's transaction on Postgres)."""
        return self.database.session_factory()

    def tenant(self, name: str = "acme") -> Tenant:
        """Create a tenant with an API key."""
        with self.session() as session:
            created = create_tenant(session, self.settings, name)
        tenant = Tenant(id=created.tenant.id, key=created.key.secret, key_id=created.key.key.id)
        self.tenants.append(tenant)
        return tenant

    @property
    def admin_headers(self) -> dict[str, str]:
        """``Authorization`` header with the admin token."""
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def all_keys(self) -> list[str]:
        """Every object key in the store (to check nothing lands outside a prefix)."""
        if isinstance(self.store, FilesystemObjectStore):
            root = self.store.root
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        assert isinstance(self.store, S3ObjectStore)
        pages = self.store.client.get_paginator("list_objects_v2").paginate(Bucket=self.store.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "environment": "local",
        "admin_token": ADMIN_TOKEN,
        "auth_cache_seconds": 0,
        "log_json": True,
    }
    base.update(overrides)
    return Settings(**base)


# -- Postgres --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url(database_url: str) -> Iterator[str]:
    """A fresh, migrated Postgres database for this test session (dropped at the end)."""
    name = f"hf_api_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """The engine of the session's Postgres database."""
    engine = make_engine(pg_url, pool_size=2, max_overflow=4)
    yield engine
    engine.dispose()


@pytest.fixture()
def pg_database(pg_engine: Engine) -> Iterator[Database]:
    """A ``Database`` whose sessions join one outer transaction, rolled back after the test."""
    connection = pg_engine.connect()
    outer = connection.begin()
    factory = sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False, autoflush=False
    )
    try:
        yield Database(engine=pg_engine, session_factory=factory)
    finally:
        outer.rollback()
        connection.close()


@pytest.fixture(scope="session")
def s3_store(s3_endpoint: str) -> S3ObjectStore:
    """An S3 store on the loopback S3 server with a bucket unique to this session."""
    store = S3ObjectStore(
        bucket=f"hf-test-{uuid.uuid4().hex[:12]}",
        region="us-east-1",
        endpoint_url=s3_endpoint,
        access_key_id="testing",
        secret_access_key="testing",
        force_path_style=True,
        chunk_bytes=5 * 1024 * 1024,
    )
    store.ensure_bucket()
    return store


@pytest.fixture()
def api_env(
    pg_database: Database, pg_url: str, s3_store: S3ObjectStore, s3_endpoint: str, redis_url: str
) -> Iterator[ApiEnv]:
    """The app on Postgres (rolled back after the test) and S3."""
    settings = _settings(
        database_url=pg_url,
        broker_url=redis_url,
        storage_backend="s3",
        s3_endpoint_url=s3_endpoint,
        s3_bucket=s3_store.bucket,
        s3_force_path_style=True,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    app = create_app(settings, database=pg_database, store=s3_store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiEnv("postgres", client, pg_database, s3_store, settings)


# -- local mode ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file, copied for each local-mode test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "hyperforge.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture()
def local_env(tmp_path: Path, sqlite_template: Path) -> Iterator[ApiEnv]:
    """The app in local mode: SQLite and the filesystem store under a temporary folder."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "hyperforge.db")
    settings = _settings(data_dir=data_dir, storage_backend="filesystem", broker_url="")
    database = Database.from_url(settings.effective_database_url)
    store = FilesystemObjectStore(settings.effective_storage_dir)
    app = create_app(settings, database=database, store=store)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield ApiEnv("local", client, database, store, settings)
    finally:
        database.dispose()


@pytest.fixture(params=["postgres", "local"])
def any_env(request: pytest.FixtureRequest) -> ApiEnv:
    """The app on Postgres + S3, then in local mode."""
    return request.getfixturevalue("api_env" if request.param == "postgres" else "local_env")  # type: ignore[no-any-return]
