"""The job status machine, enforced in this one place by the API and the worker alike.

::

    queued ──> running ──> succeeded
      │          │  │
      │          │  └──> failed ──┐
      │          ├──> queued (lease lost: the reconciler re-enqueues)
      │          └──> cancelling ──> cancelled | failed | succeeded
      └──> cancelled ─────────────┴──> queued (retry)
"""

from __future__ import annotations

from api.db.enums import JobStatus
from api.errors import ConflictProblem

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.CANCELLING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED}
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.SUCCEEDED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}
TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
LIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})
# The event a job's log records when it reaches each terminal status; a stream ends after one.
TERMINAL_EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


class InvalidTransitionError(ConflictProblem):
    """A job cannot move from its current status to the one asked for."""

    code = "invalid_transition"


def can_transition(current: str, target: str) -> bool:
    """True when the machine allows ``current -> target``."""
    return JobStatus(target) in TRANSITIONS[JobStatus(current)]


def check_transition(current: str, target: str, *, code: str | None = None) -> None:
    """Raise ``InvalidTransitionError`` (409, or ``code``) unless ``current -> target`` is allowed."""
    if not can_transition(current, target):
        raise InvalidTransitionError(f"a {current} job cannot become {target}", code=code)


def is_terminal(status: str) -> bool:
    """True for succeeded, failed and cancelled."""
    return JobStatus(status) in TERMINAL
