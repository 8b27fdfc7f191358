"""``/v1/models``: the base models jobs can train on."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, TenantDep
from api.errors import problem_responses
from api.schemas.models import BaseModelList
from api.services.models import list_models as list_models_service

router = APIRouter(prefix="/v1/models", tags=["models"], responses=problem_responses(401))


@router.get("", summary="List base models")
def list_models(session: SessionDep, _tenant: TenantDep) -> BaseModelList:
    """The base models workers can train on; use an `id` or `name` as a job's `base_model`."""
    return list_models_service(session)
