"""Webhook endpoint use cases: create (SSRF-checked, secret shown once), list, delete, delivery log."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.db.models import WebhookDelivery, WebhookEndpoint
from api.db.repositories import WebhookRepository
from api.errors import NotFoundProblem
from api.ids import Prefix
from api.schemas.webhooks import WebhookDelivery as WebhookDeliverySchema
from api.schemas.webhooks import (
    WebhookDeliveryList,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
)
from api.schemas.webhooks import WebhookEndpoint as WebhookEndpointSchema
from api.services.cursors import decode_cursor, encode_cursor
from api.webhooks.signing import generate_secret
from api.webhooks.ssrf import Resolver, check_webhook_url, system_resolver


def endpoint_to_schema(endpoint: WebhookEndpoint) -> WebhookEndpointSchema:
    """The API shape of an endpoint (never its secret)."""
    return WebhookEndpointSchema.model_validate(
        {
            "id": endpoint.id,
            "url": endpoint.url,
            "event_types": endpoint.event_types,
            "created_at": endpoint.created_at,
        }
    )


def delivery_to_schema(delivery: WebhookDelivery) -> WebhookDeliverySchema:
    """The API shape of a delivery."""
    return WebhookDeliverySchema.model_validate(
        {
            "id": delivery.id,
            "endpoint_id": delivery.endpoint_id,
            "event_id": delivery.event_id,
            "job_id": delivery.job_id,
            "status": delivery.status,
            "attempt": delivery.attempt,
            "response_status": delivery.response_status,
            "error": delivery.error,
            "next_attempt_at": delivery.next_attempt_at,
            "created_at": delivery.created_at,
            "delivered_at": delivery.delivered_at,
        }
    )


def create_endpoint(
    session: Session,
    tenant_id: str,
    body: WebhookEndpointCreate,
    *,
    allow_private: bool,
    resolver: Resolver = system_resolver,
) -> WebhookEndpointCreated:
    """Register an endpoint after the SSRF check; the response carries the secret, this once."""
    check_webhook_url(body.url, allow_private=allow_private, resolver=resolver)
    secret = generate_secret()
    endpoint = WebhookRepository(session).add_endpoint(
        tenant_id=tenant_id, url=body.url, event_types=list(body.event_types), secret=secret
    )
    session.commit()
    return WebhookEndpointCreated.model_validate(
        {**endpoint_to_schema(endpoint).model_dump(), "secret": secret}
    )


def list_endpoints(session: Session, tenant_id: str, *, limit: int, after: str | None) -> WebhookEndpointList:
    """A page of the tenant's endpoints, newest first."""
    page = WebhookRepository(session).list_endpoints(
        tenant_id, limit=limit, after=decode_cursor(after, Prefix.WEBHOOK_ENDPOINT)
    )
    return WebhookEndpointList(
        data=[endpoint_to_schema(e) for e in page.items],
        has_more=page.has_more,
        next_cursor=encode_cursor(page.next_after),
    )


def _endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = WebhookRepository(session).get_endpoint_for_tenant(tenant_id, endpoint_id)
    if endpoint is None:
        raise NotFoundProblem(f"no webhook endpoint {endpoint_id}")
    return endpoint


def get_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpointSchema:
    """The tenant's endpoint (404 for others' and deleted ones)."""
    return endpoint_to_schema(_endpoint(session, tenant_id, endpoint_id))


def delete_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> None:
    """Stop delivering to an endpoint; pending deliveries to it fail at their next attempt."""
    WebhookRepository(session).disable_endpoint(_endpoint(session, tenant_id, endpoint_id))
    session.commit()


def list_deliveries(
    session: Session, tenant_id: str, endpoint_id: str, *, limit: int, after: str | None
) -> WebhookDeliveryList:
    """A page of the endpoint's delivery log, newest first."""
    endpoint = _endpoint(session, tenant_id, endpoint_id)
    page = WebhookRepository(session).list_deliveries(
        endpoint.id, limit=limit, after=decode_cursor(after, Prefix.WEBHOOK_DELIVERY)
    )
    return WebhookDeliveryList(
        data=[delivery_to_schema(d) for d in page.items],
        has_more=page.has_more,
        next_cursor=encode_cursor(page.next_after),
    )
