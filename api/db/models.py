"""SQLAlchemy 2.0 models of every table; the migrations in ``migrations/`` follow these.

Primary keys are prefixed opaque ids (``api.ids``); times are timezone-aware UTC; JSON columns are
JSONB on Postgres. Status columns are strings with CHECK constraints (no native enums, so adding a
value is a one-line migration on both Postgres and SQLite).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from api.db.enums import DatasetStatus, DeliveryStatus, JobStatus, ModelArch, ModelFormat, values
from api.db.types import JSONType, UTCDateTime, utcnow
from api.ids import Prefix, new_id

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
ID = String(40)


class Base(DeclarativeBase):
    """Declarative base with named constraints (so migrations can drop them by name)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in allowed)})"


def _id(prefix: Prefix) -> Mapped[str]:
    return mapped_column(ID, primary_key=True, default=lambda: new_id(prefix))


def _created() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


class Tenant(Base):
    """A customer of the service; owns API keys, datasets, jobs, artifacts and webhooks."""

    __tablename__ = "tenants"

    id: Mapped[str] = _id(Prefix.TENANT)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()


class ApiKey(Base):
    """An API key: the non-secret ``prefix`` finds it, the peppered ``key_hash`` proves it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = _id(Prefix.API_KEY)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None]


class BaseModelRecord(Base):
    """A base model workers can train on; global, registered by an operator."""

    __tablename__ = "base_models"
    __table_args__ = (
        CheckConstraint(_in("arch", values(ModelArch)), name="arch"),
        CheckConstraint(_in("format", values(ModelFormat)), name="format"),
    )

    id: Mapped[str] = _id(Prefix.MODEL)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    arch: Mapped[str] = mapped_column(String(8))
    format: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(String(2000))
    # First 10 hex digits of the sha256 (A1111's short hash); None when the operator gave a remote URI.
    sha256_short: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = _created()


class Dataset(Base):
    """An uploaded, validated dataset; its normalised archive lives under ``storage_prefix``."""

    __tablename__ = "datasets"
    __table_args__ = (
        CheckConstraint(_in("status", values(DatasetStatus)), name="status"),
        Index("ix_datasets_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[str] = _id(Prefix.DATASET)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    end_user_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    caption_count: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    storage_prefix: Mapped[str] = mapped_column(String(500))
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()
    deleted_at: Mapped[datetime | None]


class Job(Base):
    """A training job; the worker holding the lease (``attempt`` is the fencing token) moves it."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", values(JobStatus)), name="status"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_dataset_id_status", "dataset_id", "status"),
    )

    id: Mapped[str] = _id(Prefix.JOB)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    end_user_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    spec: Mapped[dict[str, Any]]
    resolved_spec: Mapped[dict[str, Any] | None]
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cancel_save_checkpoint: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # ``metadata`` is taken by SQLAlchemy's declarative base; the column keeps the contract's name.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    next_seq: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """One entry of a job's event log; ``seq`` increases by one per job."""

    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[str] = _id(Prefix.EVENT)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()


class Artifact(Base):
    """A file a job produced; content-addressed so a retried upload never duplicates."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "sha256"),
        Index("ix_artifacts_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[str] = _id(Prefix.ARTIFACT)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    step: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))
    storage_key: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = _created()


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` seen with ``POST /v1/jobs``, stored in the job's transaction."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created()


class OutboxMessage(Base):
    """A message written in the same transaction as the change it announces; the worker side drains it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_pending",
            "created_at",
            postgresql_where=text("dispatched_at IS NULL"),
            sqlite_where=text("dispatched_at IS NULL"),
        ),
    )

    id: Mapped[str] = _id(Prefix.OUTBOX)
    topic: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()
    dispatched_at: Mapped[datetime | None]


class WebhookEndpoint(Base):
    """Where a tenant wants events delivered; ``secret`` signs the deliveries."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = _id(Prefix.WEBHOOK_ENDPOINT)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = _created()
    disabled_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event to one endpoint, with its retry state; unique per (endpoint, event)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", values(DeliveryStatus)), name="status"),
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    )

    id: Mapped[str] = _id(Prefix.WEBHOOK_DELIVERY)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("job_events.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None]
