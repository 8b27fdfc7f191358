"""``/v1/datasets``: upload (streamed multipart), list, get and delete datasets."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from api.db.engine import Database
from api.deps import DatabaseDep, PageAfter, PageLimit, SessionDep, SettingsDep, StorageDep, TenantDep
from api.errors import problem_responses
from api.multipart import spool_multipart
from api.schemas.datasets import Dataset, DatasetList
from api.services import datasets as service
from api.settings import Settings
from api.storage import ObjectStore

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=problem_responses(401))

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": "One zip of images and `.txt` captions (or use `files`).",
                        },
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Images and `.txt` captions, matched by base name.",
                        },
                        "name": {"type": "string", "maxLength": 200, "examples": ["inkwash"]},
                        "caption_source": {"type": "string", "enum": ["txt", "filename"], "default": "txt"},
                        "end_user_id": {"type": "string", "maxLength": 200, "examples": ["user_42"]},
                    },
                    "additionalProperties": False,
                },
                "encoding": {"archive": {"contentType": "application/zip"}},
            }
        },
    }
}


def _create(
    database: Database, store: ObjectStore, settings: Settings, tenant_id: str, upload: service.DatasetUpload
) -> Dataset:
    # Runs in a worker thread: decoding images and uploading must not block the event loop, and the
    # session is opened only now, so no connection is held while the body streams in.
    with database.session() as session:
        return service.create_dataset(session, store, settings, tenant_id, upload)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Upload a dataset",
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(400, 413, 415, 422),
)
async def create_dataset(
    request: Request, tenant: TenantDep, settings: SettingsDep, store: StorageDep, database: DatabaseDep
) -> Dataset:
    """Upload a zip (`archive`) or images and captions (`files`); every file is validated into the report."""
    form = await spool_multipart(
        request.headers.get("content-type"),
        request.stream(),
        max_files=settings.max_upload_files,
        tmp_dir=settings.upload_tmp_dir,
    )
    try:
        upload = service.parse_upload(
            form.fields,
            [
                (f.field, service.UploadedFile(filename=f.filename, path=f.path, size=f.size))
                for f in form.files
            ],
        )
        return await run_in_threadpool(_create, database, store, settings, tenant.tenant_id, upload)
    finally:
        await run_in_threadpool(form.cleanup)


@router.get("", summary="List datasets")
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: PageLimit = 20,
    after: PageAfter = None,
    end_user_id: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
    status: Annotated[Literal["ready", "invalid"] | None, Query()] = None,
) -> DatasetList:
    """The tenant's datasets, newest first, with cursor pagination."""
    return service.list_datasets(
        session, tenant.tenant_id, limit=limit, after=after, end_user_id=end_user_id, status=status
    )


@router.get("/{dataset_id}", summary="Get a dataset", responses=problem_responses(404))
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> Dataset:
    """One dataset with its validation report."""
    return service.get_dataset(session, tenant.tenant_id, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset",
    responses=problem_responses(404, 409),
    response_class=Response,
)
def delete_dataset(dataset_id: str, session: SessionDep, store: StorageDep, tenant: TenantDep) -> Response:
    """Delete a dataset and its files; 409 `dataset_in_use` while a queued or running job uses it."""
    service.delete_dataset(session, store, tenant.tenant_id, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
