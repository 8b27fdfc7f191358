"""The job status machine: exactly the transitions of the contract, in one table."""

from __future__ import annotations

import itertools

import pytest

from api.db.enums import JobStatus
from api.services.job_status import TRANSITIONS, InvalidTransitionError, can_transition, check_transition

ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "cancelling"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "queued"),
    ("cancelling", "cancelled"),
    ("cancelling", "failed"),
    ("cancelling", "succeeded"),
    ("failed", "queued"),
    ("cancelled", "queued"),
}


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product([s.value for s in JobStatus], repeat=2))
)
def test_every_pair_of_statuses(current: str, target: str) -> None:
    """Each of the 36 pairs is allowed exactly when the contract lists it."""
    assert can_transition(current, target) == ((current, target) in ALLOWED)
    if (current, target) in ALLOWED:
        check_transition(current, target)
    else:
        with pytest.raises(InvalidTransitionError) as info:
            check_transition(current, target, code="job_not_cancellable")
        assert info.value.status == 409
        assert info.value.code == "job_not_cancellable"


def test_table_covers_every_status() -> None:
    """No status is missing from the table (a new status must be given its moves)."""
    assert set(TRANSITIONS) == set(JobStatus)
    assert not TRANSITIONS[JobStatus.SUCCEEDED]
