"""What every repository shares: keyset pages and dialect-aware INSERT ... ON CONFLICT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

MAX_PAGE_SIZE = 100


T = TypeVar("T")


class RecordNotFoundError(LookupError):
    """A repository was asked to change a row that does not exist."""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a newest-first listing; ``next_after`` is the id to continue after (None: last page)."""

    items: list[T]
    has_more: bool
    next_after: str | None = None


def keyset_page(
    session: Session,
    stmt: Select[T],
    id_column: InstrumentedAttribute[str],
    *,
    limit: int,
    after: str | None,
) -> Page[T]:
    """Run ``stmt`` newest first (ids are time-ordered) from just after ``after``, ``limit`` rows."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    if after is not None:
        stmt = stmt.where(id_column < after)
    rows: Sequence[T] = session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)).all()
    items = list(rows[:limit])
    has_more = len(rows) > limit
    # The id to pass as ``after`` for the next page (None on the last page).
    next_after = str(getattr(items[-1], id_column.key)) if has_more else None
    return Page(items=items, has_more=has_more, next_after=next_after)


def insert_for(session: Session, table: Any) -> Any:
    """A dialect-specific INSERT (Postgres or SQLite) that supports ``on_conflict_do_nothing``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {dialect}")


def is_postgres(session: Session) -> bool:
    """True on Postgres, where row locks with SKIP LOCKED are available."""
    return session.get_bind().dialect.name == "postgresql"


def expire_cached(session: Session, model: type[Any], primary_key: Any) -> None:
    """Expire the session's copy of a row a bulk UPDATE just changed, so the next read refetches it."""
    cached = session.identity_map.get(session.identity_key(model, primary_key))  # type: ignore[arg-type]
    if cached is not None:
        session.expire(cached)


def rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE matched."""
    return int(result.rowcount)
