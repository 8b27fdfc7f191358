"""Request and response models of ``/v1/webhook-endpoints`` and the payload receivers get."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.events import EventType

_ENDPOINT_EXAMPLE: dict[str, Any] = {
    "id": "whe_01j9z3s5t7v9w1x3y5z7a9b1cd",
    "url": "https://platform.example.com/hooks/hyperforge",
    "event_types": ["job.succeeded", "job.failed", "job.cancelled"],
    "created_at": "2025-01-01T12:00:00Z",
}
_SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8tbjeTs8ZJY="


class WebhookEndpointCreate(BaseModel):
    """Where to deliver which events."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{k: _ENDPOINT_EXAMPLE[k] for k in ("url", "event_types")}]},
    )

    url: str = Field(min_length=1, max_length=2048, description="An http(s) URL on a public address.")
    event_types: list[EventType] = Field(min_length=1, max_length=10, description="Event types to deliver.")

    @field_validator("event_types")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class WebhookEndpoint(BaseModel):
    """A webhook endpoint (its secret is shown only when it is created)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ENDPOINT_EXAMPLE]})

    id: str
    url: str
    event_types: list[EventType]
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpoint):
    """A new endpoint with its signing secret: store it now, it is never shown again."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_ENDPOINT_EXAMPLE, "secret": _SECRET_EXAMPLE}]}
    )

    secret: str = Field(description="`whsec_<base64>`: the key of the Standard Webhooks signatures.")


class WebhookEndpointList(BaseModel):
    """One page of endpoints, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"data": [_ENDPOINT_EXAMPLE], "has_more": False, "next_cursor": None}]
        }
    )

    data: list[WebhookEndpoint]
    has_more: bool
    next_cursor: str | None


_DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": "whd_01j9z3v7w9x1y3z5a7b9c1d3ef",
    "endpoint_id": _ENDPOINT_EXAMPLE["id"],
    "event_id": "evt_01j9z3n4p6q8r0s2t4v6w8x0yz",
    "job_id": "job_01j9z3m1x5b2c7d9e4f6g8h0jk",
    "status": "pending",
    "attempt": 2,
    "response_status": 503,
    "error": "HTTP 503",
    "next_attempt_at": "2025-01-01T12:35:05Z",
    "created_at": "2025-01-01T12:00:00Z",
    "delivered_at": None,
}


class WebhookDelivery(BaseModel):
    """One event's delivery to one endpoint: its latest attempt and when the next one is due."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DELIVERY_EXAMPLE]})

    id: str = Field(description="Also the `webhook-id` header, the same on every retry.")
    endpoint_id: str
    event_id: str
    job_id: str
    status: Literal["pending", "succeeded", "failed"] = Field(
        description="`failed` once every retry is spent (or the URL became forbidden)."
    )
    attempt: int = Field(description="Attempts made so far.")
    response_status: int | None = Field(description="HTTP status of the latest attempt (null: no response).")
    error: str | None = Field(description="Why the latest attempt failed.")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryList(BaseModel):
    """One page of an endpoint's deliveries, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"data": [_DELIVERY_EXAMPLE], "has_more": False, "next_cursor": None}]
        }
    )

    data: list[WebhookDelivery]
    has_more: bool
    next_cursor: str | None


class WebhookPayload(BaseModel):
    """The body of a delivery: small on purpose; fetch the job for everything else."""

    type: EventType
    job_id: str
    seq: int
    status: str
    progress: dict[str, Any]
    links: dict[str, str]
