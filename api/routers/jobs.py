"""``/v1/jobs``: create (idempotent), validate, list, get, cancel and retry training jobs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Body, Depends, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response

from api.db.engine import Database
from api.deps import DatabaseDep, PageAfter, PageLimit, SessionDep, SettingsDep, TenantDep
from api.errors import BadRequestProblem, NotFoundProblem, UnsupportedMediaTypeProblem, ValidationProblem
from api.errors import problem_responses as problems
from api.ids import Prefix, is_valid_id
from api.schemas.jobs import CancelRequest, Job, JobList, JobStatusValue, JobValidation, spec_request_body
from api.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401))

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
NO_NUL = r"^[^\x00]*$"  # Postgres text cannot hold NUL; refuse it at the edge (422), never a 500

_IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": True,
    "description": "A unique key per intended job (a UUID): a retry with the same key and body replays "
    "the first response (`Idempotent-Replayed: true`); the same key with another body is 422 "
    "`idempotency_key_reused`.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY,
        "pattern": "^[\\x21-\\x7e]+$",
    },
    "example": "5f1c2d3e-8a9b-4c0d-9e1f-2a3b4c5d6e7f",
}


def _nul_pointer(value: Any, path: str = "") -> str | None:
    """The JSON pointer of the first string (key or value) holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            escaped = str(key).replace("~", "~0").replace("/", "~1")
            found = f"{path}/{escaped}" if "\x00" in str(key) else _nul_pointer(item, f"{path}/{escaped}")
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_pointer(item, f"{path}/{index}")
            if found is not None:
                return found
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: Request) -> Any:
    """The request body parsed as strict JSON (no NaN/Infinity, no NUL in strings)."""
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaTypeProblem("send the spec as application/json")
    raw = await request.body()
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequestProblem(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    pointer = _nul_pointer(body)
    if pointer is not None:
        raise ValidationProblem(
            "strings must not contain NUL characters", code="invalid_string", pointer=pointer
        )
    return body


async def idempotency_key(request: Request) -> str:
    """The ``Idempotency-Key`` header; 400 ``idempotency_key_required`` when missing or malformed."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or not key.strip():
        raise BadRequestProblem(
            f"POST /v1/jobs needs an {IDEMPOTENCY_HEADER} header (e.g. a UUID)",
            code="idempotency_key_required",
        )
    if len(key) > MAX_IDEMPOTENCY_KEY or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise BadRequestProblem(
            f"the {IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


async def job_id_path(job_id: Annotated[str, Path(description="The job's id (`job_...`).")]) -> str:
    """A job id from the path; a string that cannot be a job id is a plain 404."""
    if not is_valid_id(job_id, Prefix.JOB):
        raise NotFoundProblem(f"no job {job_id}")
    return job_id


JsonBody = Annotated[Any, Depends(json_body)]
IdempotencyKey = Annotated[str, Depends(idempotency_key)]
JobId = Annotated[str, Depends(job_id_path)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Create a job",
    response_model=Job,
    responses={
        202: {
            "description": "The job, queued. A replay carries `Idempotent-Replayed: true`.",
            "headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}},
        },
        **problems(400, 415, 422),
    },
    openapi_extra={**spec_request_body(), "parameters": [_IDEMPOTENCY_PARAMETER]},
)
def create_job(
    session: SessionDep, tenant: TenantDep, settings: SettingsDep, body: JsonBody, key: IdempotencyKey
) -> JSONResponse:
    """Queue a training job from a spec; send an `Idempotency-Key` so a retried request never makes two."""
    created = service.create_job(
        session, tenant.tenant_id, idempotency_key=key, body=body, max_attempts=settings.job_max_attempts
    )
    headers = {"Idempotent-Replayed": "true"} if created.replayed else {}
    return JSONResponse(created.body, status_code=status.HTTP_202_ACCEPTED, headers=headers)


@router.post(
    "/validate",
    summary="Validate a spec",
    responses=problems(400, 415, 422),
    openapi_extra=spec_request_body(),
)
def validate_job(session: SessionDep, tenant: TenantDep, body: JsonBody) -> JobValidation:
    """Check a spec without creating anything: the resolved spec, warnings and a size/time estimate."""
    return service.validate_job(session, tenant.tenant_id, body)


@router.get("", summary="List jobs", responses=problems(422))
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: PageLimit = 20,
    after: PageAfter = None,
    status: Annotated[JobStatusValue | None, Query(description="Only jobs in this status.")] = None,
    end_user_id: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
) -> JobList:
    """The tenant's jobs, newest first, with cursor pagination and filters."""
    return service.list_jobs(
        session, tenant.tenant_id, limit=limit, after=after, status=status, end_user_id=end_user_id
    )


def _job_json(database: Database, tenant_id: str, job_id: str) -> bytes:
    with database.session() as session:
        return service.get_job_json(session, tenant_id, job_id)


@router.get("/{job_id}", summary="Get a job", response_model=Job, responses=problems(404))
async def get_job(job_id: JobId, tenant: TenantDep, database: DatabaseDep, request: Request) -> Response:
    """One job with its progress."""
    # The route clients poll: its dependencies are async (the key cache answers without a thread),
    # so session, read and serialisation are its one worker-thread hop, through the app's poll
    # limiter (as many threads as pooled connections, served in order; see create_app).
    limiter: anyio.CapacityLimiter = request.app.state.poll_limiter
    body = await anyio.to_thread.run_sync(_job_json, database, tenant.tenant_id, job_id, limiter=limiter)
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", summary="Cancel a job", responses=problems(404, 409, 422))
def cancel_job(
    job_id: JobId,
    session: SessionDep,
    tenant: TenantDep,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> Job:
    """Cancel: a queued job at once, a running one at its next step (`cancelling`); 409 once finished."""
    save = body.save_checkpoint if body is not None else False
    return service.cancel_job(session, tenant.tenant_id, job_id, save_checkpoint=save)


@router.post("/{job_id}/retry", summary="Retry a job", responses=problems(404, 409))
def retry_job(job_id: JobId, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> Job:
    """Queue a failed or cancelled job again; it resumes from its latest checkpoint."""
    return service.retry_job(session, tenant.tenant_id, job_id, max_attempts=settings.job_max_attempts)
