"""Webhook endpoints and their delivery log."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from api.db.enums import DeliveryStatus
from api.db.models import WebhookDelivery, WebhookEndpoint
from api.db.repositories.base import Page, expire_cached, insert_for, is_postgres, keyset_page, rowcount
from api.db.types import utcnow
from api.ids import Prefix, new_id


class WebhookRepository:
    """Webhook endpoints and deliveries."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- endpoints ----------------------------------------------------------------------------------
    def add_endpoint(
        self, *, tenant_id: str, url: str, event_types: list[str], secret: str
    ) -> WebhookEndpoint:
        """Create an endpoint."""
        endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, event_types=event_types, secret=secret)
        self.session.add(endpoint)
        self.session.flush()
        return endpoint

    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """An endpoint by id, whoever owns it, disabled or not."""
        return self.session.get(WebhookEndpoint, endpoint_id)

    def get_endpoint_for_tenant(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        """The tenant's active endpoint, or None."""
        stmt = select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id,
            WebhookEndpoint.tenant_id == tenant_id,
            WebhookEndpoint.disabled_at.is_(None),
        )
        return self.session.scalars(stmt).first()

    def list_endpoints(
        self, tenant_id: str, *, limit: int = 20, after: str | None = None
    ) -> Page[WebhookEndpoint]:
        """The tenant's active endpoints, newest first."""
        stmt = select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.disabled_at.is_(None)
        )
        return keyset_page(self.session, stmt, WebhookEndpoint.id, limit=limit, after=after)

    def disable_endpoint(self, endpoint: WebhookEndpoint, *, now: datetime | None = None) -> None:
        """Stop deliveries to an endpoint (its log stays)."""
        endpoint.disabled_at = now or utcnow()
        self.session.flush()

    def endpoints_for_event(self, tenant_id: str, event_type: str) -> list[WebhookEndpoint]:
        """The tenant's active endpoints subscribed to ``event_type`` (an empty list or ``*`` means all)."""
        stmt = select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.disabled_at.is_(None)
        )
        # Filtered here rather than in SQL: JSON containment differs between Postgres and SQLite,
        # and a tenant has a handful of endpoints.
        return [
            e
            for e in self.session.scalars(stmt)
            if not e.event_types or "*" in e.event_types or event_type in e.event_types
        ]

    # -- deliveries ---------------------------------------------------------------------------------
    def add_deliveries(
        self, *, endpoint_ids: Iterable[str], event_id: str, job_id: str, now: datetime | None = None
    ) -> int:
        """One pending delivery per endpoint for the event; existing (endpoint, event) pairs are skipped."""
        now = now or utcnow()
        rows: list[dict[str, Any]] = [
            {
                "id": new_id(Prefix.WEBHOOK_DELIVERY),
                "endpoint_id": endpoint_id,
                "event_id": event_id,
                "job_id": job_id,
                "attempt": 0,
                "status": DeliveryStatus.PENDING.value,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint_id in endpoint_ids
        ]
        if not rows:
            return 0
        stmt = (
            insert_for(self.session, WebhookDelivery.__table__)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
            .returning(WebhookDelivery.__table__.c.id)
        )
        # RETURNING lists what this statement inserted (rowcount is not reliable for INSERTs).
        return len(self.session.execute(stmt).all())

    def due_deliveries(self, *, now: datetime | None = None, limit: int = 50) -> list[WebhookDelivery]:
        """Pending deliveries whose next attempt is due; locked with SKIP LOCKED on Postgres."""
        stmt = (
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                or_(
                    WebhookDelivery.next_attempt_at.is_(None),
                    WebhookDelivery.next_attempt_at <= (now or utcnow()),
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        if is_postgres(self.session):
            stmt = stmt.with_for_update(skip_locked=True)
        return list(self.session.scalars(stmt))

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        """A delivery by id."""
        return self.session.get(WebhookDelivery, delivery_id)

    def record_attempt(
        self,
        delivery_id: str,
        *,
        attempt: int,
        status: str,
        response_status: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
        delivered_at: datetime | None = None,
    ) -> bool:
        """Store one attempt's outcome, only if no one recorded this attempt already (compare-and-set)."""
        stmt = (
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempt == attempt - 1)
            .values(
                attempt=attempt,
                status=status,
                response_status=response_status,
                error=error,
                next_attempt_at=next_attempt_at,
                delivered_at=delivered_at,
            )
            .execution_options(synchronize_session=False)
        )
        changed = rowcount(self.session.execute(stmt)) == 1
        expire_cached(self.session, WebhookDelivery, delivery_id)
        return changed

    def list_deliveries(
        self, endpoint_id: str, *, limit: int = 20, after: str | None = None
    ) -> Page[WebhookDelivery]:
        """An endpoint's deliveries, newest first."""
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        return keyset_page(self.session, stmt, WebhookDelivery.id, limit=limit, after=after)
