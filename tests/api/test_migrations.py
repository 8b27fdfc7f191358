"""Alembic: upgrade from empty and downgrade to base, on Postgres and SQLite; models match the migrations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from api.db.engine import make_engine
from api.db.migrate import downgrade, upgrade
from api.db.models import Base

TABLES = {
    "tenants",
    "api_keys",
    "base_models",
    "datasets",
    "jobs",
    "job_events",
    "artifacts",
    "idempotency_keys",
    "outbox",
    "webhook_endpoints",
    "webhook_deliveries",
}


@pytest.fixture()
def empty_postgres(database_url: str) -> Iterator[str]:
    name = f"hf_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture()
def empty_sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrate.db'}"


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("empty_postgres" if request.param == "postgres" else "empty_sqlite"))


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_then_downgrade_to_base(empty_database: str) -> None:
    assert _tables(empty_database) == set()
    upgrade(empty_database)
    assert _tables(empty_database) == TABLES
    downgrade(empty_database, "base")
    assert _tables(empty_database) == set()
    upgrade(empty_database)  # and back up again: downgrade left nothing behind that blocks it
    assert _tables(empty_database) == TABLES


def test_models_and_migrations_agree(empty_database: str) -> None:
    """Autogenerate finds nothing to do: the models and the migration describe the same schema."""
    upgrade(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
