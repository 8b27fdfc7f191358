"""``/v1/admin``: operator routes (tenants, base models), guarded by the admin token."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import AdminDep, SessionDep, SettingsDep
from api.errors import problem_responses
from api.schemas.admin import TenantCreate, TenantCreated
from api.schemas.models import BaseModelCreate, BaseModelOut
from api.services.models import model_to_schema, register_model
from api.services.tenants import create_tenant as create_tenant_service

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep], responses=problem_responses(401, 403, 422)
)


@router.post("/tenants", status_code=status.HTTP_201_CREATED, summary="Create a tenant")
def create_tenant(body: TenantCreate, session: SessionDep, settings: SettingsDep) -> TenantCreated:
    """Create a tenant and its first API key; the key is in this response only."""
    created = create_tenant_service(session, settings, body.name)
    return TenantCreated(
        id=created.tenant.id,
        name=created.tenant.name,
        created_at=created.tenant.created_at,
        api_key=created.key.secret,
        api_key_id=created.key.key.id,
    )


@router.post(
    "/models",
    status_code=status.HTTP_201_CREATED,
    summary="Register a base model",
    responses=problem_responses(409),
)
def create_model(body: BaseModelCreate, session: SessionDep) -> BaseModelOut:
    """Register a base model workers can load (a local path they share, or an s3:// or https:// URI)."""
    record = register_model(
        session, name=body.name, uri=body.uri, arch=body.arch, format=body.format, sha256=body.sha256
    )
    return model_to_schema(record)
