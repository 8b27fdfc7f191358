"""The status and kind values stored in the database (the contract's spelling)."""

from __future__ import annotations

from enum import StrEnum


class DatasetStatus(StrEnum):
    """A dataset is usable (``ready``) or recorded with its report but unusable (``invalid``)."""

    READY = "ready"
    INVALID = "invalid"


class JobStatus(StrEnum):
    """A job's status; the allowed moves are in ``api.services.job_status``."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_JOB_STATUSES: frozenset[str] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)


class ModelArch(StrEnum):
    """Base model families."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


class ModelFormat(StrEnum):
    """How a base model is stored: a diffusers folder or one checkpoint file."""

    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single_file"


class DeliveryStatus(StrEnum):
    """A webhook delivery's state."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """The stored strings of an enum, in declaration order."""
    return tuple(member.value for member in enum)
