"""``/v1/webhook-endpoints``: where signed event deliveries go, and their delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status

from api.deps import PageAfter, PageLimit, SessionDep, SettingsDep, TenantDep
from api.errors import NotFoundProblem
from api.errors import problem_responses as problems
from api.ids import Prefix, is_valid_id
from api.schemas.webhooks import (
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
)
from api.services import webhooks as service

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"], responses=problems(401))


async def endpoint_id_path(
    endpoint_id: Annotated[str, Path(description="The endpoint's id (`whe_...`).")],
) -> str:
    """An endpoint id from the path; a string that cannot be one is a plain 404."""
    if not is_valid_id(endpoint_id, Prefix.WEBHOOK_ENDPOINT):
        raise NotFoundProblem(f"no webhook endpoint {endpoint_id}")
    return endpoint_id


EndpointId = Annotated[str, Depends(endpoint_id_path)]


@router.post(
    "", status_code=status.HTTP_201_CREATED, summary="Create a webhook endpoint", responses=problems(422)
)
def create_endpoint(
    body: WebhookEndpointCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> WebhookEndpointCreated:
    """Register a URL for the given event types; the signing secret is in this response only."""
    return service.create_endpoint(
        session, tenant.tenant_id, body, allow_private=settings.webhook_allow_private
    )


@router.get("", summary="List webhook endpoints", responses=problems(422))
def list_endpoints(
    session: SessionDep, tenant: TenantDep, limit: PageLimit = 20, after: PageAfter = None
) -> WebhookEndpointList:
    """The tenant's endpoints, newest first."""
    return service.list_endpoints(session, tenant.tenant_id, limit=limit, after=after)


@router.get("/{endpoint_id}", summary="Get a webhook endpoint", responses=problems(404))
def get_endpoint(endpoint_id: EndpointId, session: SessionDep, tenant: TenantDep) -> WebhookEndpoint:
    """One endpoint (without its secret)."""
    return service.get_endpoint(session, tenant.tenant_id, endpoint_id)


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook endpoint",
    response_class=Response,
    responses=problems(404),
)
def delete_endpoint(endpoint_id: EndpointId, session: SessionDep, tenant: TenantDep) -> Response:
    """Stop deliveries to the endpoint; deliveries still pending fail at their next attempt."""
    service.delete_endpoint(session, tenant.tenant_id, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{endpoint_id}/deliveries", summary="List an endpoint's deliveries", responses=problems(404, 422)
)
def list_deliveries(
    endpoint_id: EndpointId,
    session: SessionDep,
    tenant: TenantDep,
    limit: PageLimit = 20,
    after: PageAfter = None,
) -> WebhookDeliveryList:
    """Each event sent (or to be sent) to the endpoint with its latest attempt, newest first."""
    return service.list_deliveries(session, tenant.tenant_id, endpoint_id, limit=limit, after=after)
