"""Artifact use cases: a job's listing and the content download (redirect or stream with Range)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from api.db.models import Artifact
from api.db.repositories import ArtifactRepository, JobRepository
from api.errors import NotFoundProblem, RangeNotSatisfiableProblem
from api.schemas.artifacts import Artifact as ArtifactSchema
from api.schemas.artifacts import ArtifactList
from api.storage import ObjectStore, UnsatisfiableRangeError, content_disposition, parse_range


def artifact_to_schema(artifact: Artifact) -> ArtifactSchema:
    """The API shape of an artifact row."""
    return ArtifactSchema.model_validate(
        {
            "id": artifact.id,
            "kind": artifact.kind,
            "name": artifact.name,
            "step": artifact.step,
            "bytes": artifact.bytes,
            "sha256": artifact.sha256,
            "content_type": artifact.content_type,
            "created_at": artifact.created_at,
        }
    )


def list_artifacts(session: Session, tenant_id: str, job_id: str, *, kind: str | None = None) -> ArtifactList:
    """Every artifact of the tenant's job in the order they were made (404 for others' jobs)."""
    if JobRepository(session).get_for_tenant(tenant_id, job_id) is None:
        raise NotFoundProblem(f"no job {job_id}")
    rows = ArtifactRepository(session).list_for_job(job_id, kind=kind)
    return ArtifactList(data=[artifact_to_schema(a) for a in rows], has_more=False)


@dataclass(frozen=True)
class ArtifactRedirect:
    """The content lives behind a short-lived presigned URL."""

    url: str


@dataclass(frozen=True)
class ArtifactStream:
    """The content streamed by the API: whole (200) or one byte range (206)."""

    status: int
    chunks: Iterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/octet-stream"


def artifact_content(
    session: Session, store: ObjectStore, tenant_id: str, artifact_id: str, *, range_header: str | None
) -> ArtifactRedirect | ArtifactStream:
    """Where to get an artifact's bytes: a presigned URL when the store has them, else a (ranged) stream."""
    artifact = ArtifactRepository(session).get_for_tenant(tenant_id, artifact_id)
    if artifact is None:
        raise NotFoundProblem(f"no artifact {artifact_id}")
    key, name, content_type = artifact.storage_key, artifact.name, artifact.content_type
    # Release the database connection now: the download may take minutes.
    session.rollback()
    url = store.presigned_get_url(key, filename=name, content_type=content_type)
    if url is not None:
        return ArtifactRedirect(url=url)
    meta = store.head(key)
    if meta is None:
        raise NotFoundProblem("the artifact's content is gone", code="artifact_content_missing")
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": content_disposition(name)}
    try:
        byte_range = parse_range(range_header, meta.bytes)
    except UnsatisfiableRangeError:
        raise RangeNotSatisfiableProblem(
            f"the artifact has {meta.bytes} bytes", headers={"Content-Range": f"bytes */{meta.bytes}"}
        ) from None
    if byte_range is None:
        headers["Content-Length"] = str(meta.bytes)
        return ArtifactStream(200, store.iter_bytes(key), headers, content_type)
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = byte_range.content_range()
    return ArtifactStream(
        206, store.iter_bytes(key, start=byte_range.start, end=byte_range.end), headers, content_type
    )
