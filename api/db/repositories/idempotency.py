"""Idempotency keys of ``POST /v1/jobs``, written in the same transaction as the job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.db.models import IdempotencyKey
from api.db.repositories.base import insert_for, rowcount
from api.db.types import utcnow


class IdempotencyRepository:
    """Idempotency keys, scoped per tenant."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str, key: str) -> IdempotencyKey | None:
        """The stored record for this tenant's key."""
        stmt = select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
        return self.session.scalars(stmt).first()

    def insert_if_absent(
        self,
        *,
        tenant_id: str,
        key: str,
        request_hash: str,
        job_id: str | None,
        response: dict[str, Any] | None,
    ) -> bool:
        """Store the key; False when a concurrent request stored it first (then replay or refuse)."""
        stmt = (
            insert_for(self.session, IdempotencyKey.__table__)
            .values(
                tenant_id=tenant_id,
                key=key,
                request_hash=request_hash,
                job_id=job_id,
                response=response,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        )
        # SQLAlchemy 2.1 reports rowcount -1 for an INSERT unless asked to keep it.
        return rowcount(self.session.execute(stmt.execution_options(preserve_rowcount=True))) == 1

    def purge_before(self, before: datetime) -> int:
        """Forget keys older than ``before``; return how many."""
        stmt = delete(IdempotencyKey).where(IdempotencyKey.created_at < before)
        return rowcount(self.session.execute(stmt.execution_options(synchronize_session=False)))
