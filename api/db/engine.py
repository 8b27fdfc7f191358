"""Engines and sessions for Postgres (production) and SQLite (local mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 10, foreign_keys: bool = True
) -> Engine:
    """An engine for ``url``: pooled for Postgres; for SQLite, WAL mode and SQLAlchemy-managed BEGINs.

    ``foreign_keys=False`` is for migrations on SQLite, where batch mode copies tables and
    enforced foreign keys would cascade or refuse mid-copy.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine, foreign_keys=foreign_keys, path=make_url(url).database)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)


def _configure_sqlite(engine: Engine, *, foreign_keys: bool, path: str | None) -> None:
    """pysqlite's own transaction handling breaks SAVEPOINTs; let SQLAlchemy emit BEGIN itself."""

    @event.listens_for(engine, "do_connect")
    def _make_folder(*_args: Any) -> None:
        # The database file's folder is created on first connect, not when the engine is built.
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def make_session_factory(bind: Any) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (responses are built from them)."""
    return sessionmaker(bind=bind, expire_on_commit=False, autoflush=False)


@dataclass
class Database:
    """An engine and its session factory; what the app and the worker hold."""

    engine: Engine
    session_factory: sessionmaker[Session]

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Database:
        """Connect (lazily) to ``url``."""
        engine = make_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        return cls(engine=engine, session_factory=make_session_factory(engine))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back whatever was not committed and is always closed."""
        session = self.session_factory()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def check(self) -> None:
        """Raise unless the database answers a trivial query (readiness)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close the pool's connections."""
        self.engine.dispose()
