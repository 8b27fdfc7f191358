"""Base models (global, operator-registered)."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.db.models import BaseModelRecord


class BaseModelRepository:
    """Base models workers can train on."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self, *, name: str, arch: str, format: str, uri: str, sha256_short: str | None
    ) -> BaseModelRecord:
        """Register a model (the name must be unused)."""
        record = BaseModelRecord(name=name, arch=arch, format=format, uri=uri, sha256_short=sha256_short)
        self.session.add(record)
        self.session.flush()
        return record

    def get(self, model_id: str) -> BaseModelRecord | None:
        """A model by id."""
        return self.session.get(BaseModelRecord, model_id)

    def get_by_name(self, name: str) -> BaseModelRecord | None:
        """A model by its unique name."""
        return self.session.scalars(select(BaseModelRecord).where(BaseModelRecord.name == name)).first()

    def resolve(self, ref: str) -> BaseModelRecord | None:
        """A model by id (``mdl_...``) or by name (``sd15``): what a job spec's ``base_model`` holds."""
        stmt = select(BaseModelRecord).where(or_(BaseModelRecord.id == ref, BaseModelRecord.name == ref))
        return self.session.scalars(stmt).first()

    def list_all(self) -> list[BaseModelRecord]:
        """Every model, by name."""
        return list(self.session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.name)))
