"""Persistence: SQLAlchemy 2.0 models, engines/sessions and repositories (framework-free)."""

from __future__ import annotations

from api.db.engine import Database, make_engine, make_session_factory

__all__ = ["Database", "make_engine", "make_session_factory"]
