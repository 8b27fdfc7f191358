"""Response models of ``/v1/jobs/{id}/events`` (one log behind polling, SSE and webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal[
    "job.queued",
    "job.started",
    "job.progress",
    "job.checkpoint",
    "job.sample",
    "job.resumed",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.log",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

_EVENT_EXAMPLE: dict[str, Any] = {
    "id": "evt_01j9z3n4p6q8r0s2t4v6w8x0yz",
    "seq": 7,
    "type": "job.progress",
    "created_at": "2025-01-01T12:03:10Z",
    "data": {"step": 1200, "total_steps": 10000, "loss": 0.113},
}


class JobEvent(BaseModel):
    """One entry of a job's event log."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    id: str
    seq: int = Field(description="Increases by one per event of the job; the SSE `id:`.")
    type: EventType
    created_at: datetime
    data: dict[str, Any]


class JobEventList(BaseModel):
    """Events after ``after``, oldest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_EVENT_EXAMPLE], "has_more": False}]})

    data: list[JobEvent]
    has_more: bool = Field(description="More events exist after the last one returned.")
