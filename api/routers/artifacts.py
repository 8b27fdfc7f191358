"""``/v1/jobs/{id}/artifacts`` and ``/v1/artifacts/{id}/content``: what jobs produced, and its bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, status
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from api.deps import SessionDep, StorageDep, TenantDep
from api.errors import NotFoundProblem
from api.errors import problem_responses as problems
from api.ids import Prefix, is_valid_id
from api.routers.jobs import JobId
from api.schemas.artifacts import ArtifactKind, ArtifactList
from api.services import artifacts as service

router = APIRouter(tags=["artifacts"], responses=problems(401))


async def artifact_id_path(
    artifact_id: Annotated[str, Path(description="The artifact's id (`art_...`).")],
) -> str:
    """An artifact id from the path; a string that cannot be one is a plain 404."""
    if not is_valid_id(artifact_id, Prefix.ARTIFACT):
        raise NotFoundProblem(f"no artifact {artifact_id}")
    return artifact_id


ArtifactId = Annotated[str, Depends(artifact_id_path)]


@router.get("/v1/jobs/{job_id}/artifacts", summary="List a job's artifacts", responses=problems(404, 422))
def list_artifacts(
    job_id: JobId,
    session: SessionDep,
    tenant: TenantDep,
    kind: Annotated[ArtifactKind | None, Query(description="Only artifacts of this kind.")] = None,
) -> ArtifactList:
    """Every file the job has produced so far, oldest first."""
    return service.list_artifacts(session, tenant.tenant_id, job_id, kind=kind)


@router.get(
    "/v1/artifacts/{artifact_id}/content",
    summary="Download an artifact",
    response_class=Response,
    responses={
        200: {"description": "The whole file.", "content": {"application/octet-stream": {}}},
        206: {"description": "The requested byte range.", "content": {"application/octet-stream": {}}},
        302: {"description": "A short-lived presigned URL (object storage); it honours `Range` too."},
        **problems(404, 416),
    },
)
def artifact_content(
    artifact_id: ArtifactId,
    session: SessionDep,
    store: StorageDep,
    tenant: TenantDep,
    range: Annotated[str | None, Header(description="One byte range, e.g. `bytes=0-1023`.")] = None,
) -> Response:
    """The artifact's bytes: a redirect to object storage, or streamed by the API with `Range` support."""
    result = service.artifact_content(session, store, tenant.tenant_id, artifact_id, range_header=range)
    if isinstance(result, service.ArtifactRedirect):
        return RedirectResponse(
            result.url, status_code=status.HTTP_302_FOUND, headers={"Cache-Control": "no-store"}
        )
    return StreamingResponse(
        result.chunks, status_code=result.status, headers=result.headers, media_type=result.media_type
    )
