"""Repositories: all SQL lives here. Each takes a ``Session``; none commits (services do)."""

from __future__ import annotations

from api.db.repositories.artifacts import ArtifactRepository
from api.db.repositories.base import MAX_PAGE_SIZE, Page, RecordNotFoundError
from api.db.repositories.base_models import BaseModelRepository
from api.db.repositories.datasets import DatasetRepository
from api.db.repositories.idempotency import IdempotencyRepository
from api.db.repositories.jobs import JobRepository, Lease
from api.db.repositories.outbox import OutboxRepository
from api.db.repositories.tenants import ApiKeyRepository, TenantRepository
from api.db.repositories.webhooks import WebhookRepository

__all__ = [
    "MAX_PAGE_SIZE",
    "ApiKeyRepository",
    "ArtifactRepository",
    "BaseModelRepository",
    "DatasetRepository",
    "IdempotencyRepository",
    "JobRepository",
    "Lease",
    "OutboxRepository",
    "Page",
    "RecordNotFoundError",
    "TenantRepository",
    "WebhookRepository",
]
