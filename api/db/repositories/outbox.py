"""The transactional outbox: messages written with the change they announce, drained after commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from api.db.models import OutboxMessage
from api.db.repositories.base import expire_cached, is_postgres, rowcount
from api.db.types import utcnow


class OutboxRepository:
    """Outbox messages."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, topic: str, payload: dict[str, Any]) -> OutboxMessage:
        """Write a message in the caller's transaction (it is seen only if that commits)."""
        message = OutboxMessage(topic=topic, payload=payload)
        self.session.add(message)
        self.session.flush()
        return message

    def pending(self, *, limit: int = 100, topic: str | None = None) -> list[OutboxMessage]:
        """Undispatched messages, oldest first; on Postgres locked with SKIP LOCKED so drainers share."""
        stmt = select(OutboxMessage).where(OutboxMessage.dispatched_at.is_(None))
        if topic is not None:
            stmt = stmt.where(OutboxMessage.topic == topic)
        stmt = stmt.order_by(OutboxMessage.created_at, OutboxMessage.id).limit(limit)
        if is_postgres(self.session):
            stmt = stmt.with_for_update(skip_locked=True)
        return list(self.session.scalars(stmt))

    def mark_dispatched(self, ids: Sequence[str], *, now: datetime | None = None) -> int:
        """Mark messages as handed to the broker."""
        if not ids:
            return 0
        stmt = (
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(list(ids)), OutboxMessage.dispatched_at.is_(None))
            .values(dispatched_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )
        count = rowcount(self.session.execute(stmt))
        for message_id in ids:
            expire_cached(self.session, OutboxMessage, message_id)
        return count

    def pending_count(self) -> int:
        """How many messages wait to be dispatched (queue depth for /metrics)."""
        stmt = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.dispatched_at.is_(None))
        return int(self.session.scalar(stmt) or 0)

    def purge_dispatched_before(self, before: datetime) -> int:
        """Delete dispatched messages older than ``before``."""
        stmt = delete(OutboxMessage).where(
            OutboxMessage.dispatched_at.is_not(None), OutboxMessage.dispatched_at < before
        )
        return rowcount(self.session.execute(stmt.execution_options(synchronize_session=False)))
