"""Datasets; deleted ones are kept (jobs refer to them) but hidden from tenants."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Dataset
from api.db.repositories.base import Page, is_postgres, keyset_page
from api.db.types import utcnow


class DatasetRepository:
    """Datasets."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        """Insert a dataset row."""
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, dataset_id: str) -> Dataset | None:
        """A dataset by id, whoever owns it, deleted or not (the worker's view)."""
        return self.session.get(Dataset, dataset_id)

    def get_for_tenant(self, tenant_id: str, dataset_id: str, *, for_update: bool = False) -> Dataset | None:
        """The tenant's undeleted dataset, or None (others' datasets are None too).

        ``for_update`` locks the row until commit (Postgres): deleting a dataset and creating a job on
        it both lock it, so a job never starts on a dataset being deleted.
        """
        stmt = select(Dataset).where(
            Dataset.id == dataset_id, Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)
        )
        if for_update and is_postgres(self.session):
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt.execution_options(populate_existing=for_update)).first()

    def list_page(
        self,
        tenant_id: str,
        *,
        limit: int = 20,
        after: str | None = None,
        end_user_id: str | None = None,
        status: str | None = None,
    ) -> Page[Dataset]:
        """The tenant's undeleted datasets, newest first."""
        stmt = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
        if end_user_id is not None:
            stmt = stmt.where(Dataset.end_user_id == end_user_id)
        if status is not None:
            stmt = stmt.where(Dataset.status == status)
        return keyset_page(self.session, stmt, Dataset.id, limit=limit, after=after)

    def mark_deleted(self, dataset: Dataset, *, now: datetime | None = None) -> None:
        """Hide the dataset from its tenant (the row stays for the jobs that used it)."""
        dataset.deleted_at = now or utcnow()
        self.session.flush()
