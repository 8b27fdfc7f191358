"""Artifacts: content-addressed per (job, kind, sha256), so a retried upload records nothing new."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Artifact
from api.db.repositories.base import insert_for
from api.db.types import utcnow
from api.ids import Prefix, new_id


class ArtifactRepository:
    """Artifacts."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_if_absent(
        self,
        *,
        job_id: str,
        tenant_id: str,
        kind: str,
        name: str,
        step: int | None,
        bytes: int,
        sha256: str,
        content_type: str,
        storage_key: str,
    ) -> tuple[Artifact, bool]:
        """Record an artifact unless the same (job, kind, sha256) exists; return it and whether it is new."""
        stmt = (
            insert_for(self.session, Artifact.__table__)
            .values(
                id=new_id(Prefix.ARTIFACT),
                job_id=job_id,
                tenant_id=tenant_id,
                kind=kind,
                name=name,
                step=step,
                bytes=bytes,
                sha256=sha256,
                content_type=content_type,
                storage_key=storage_key,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["job_id", "kind", "sha256"])
            .returning(Artifact.__table__.c.id)
        )
        # RETURNING tells whether this statement inserted (rowcount is not reliable for INSERTs).
        created = self.session.execute(stmt).first() is not None
        artifact = self.get_by_content(job_id, kind, sha256)
        assert artifact is not None  # inserted now or by the earlier upload the conflict found
        return artifact, created

    def get_by_content(self, job_id: str, kind: str, sha256: str) -> Artifact | None:
        """The artifact of this job with this kind and content."""
        stmt = select(Artifact).where(
            Artifact.job_id == job_id, Artifact.kind == kind, Artifact.sha256 == sha256
        )
        return self.session.scalars(stmt).first()

    def get(self, artifact_id: str) -> Artifact | None:
        """An artifact by id, whoever owns it."""
        return self.session.get(Artifact, artifact_id)

    def get_for_tenant(self, tenant_id: str, artifact_id: str) -> Artifact | None:
        """The tenant's artifact, or None."""
        stmt = select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id)
        return self.session.scalars(stmt).first()

    def list_for_job(self, job_id: str, *, kind: str | None = None) -> list[Artifact]:
        """A job's artifacts in the order they were made."""
        stmt = select(Artifact).where(Artifact.job_id == job_id)
        if kind is not None:
            stmt = stmt.where(Artifact.kind == kind)
        return list(self.session.scalars(stmt.order_by(Artifact.id)))
