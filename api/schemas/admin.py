"""Request and response models of the admin routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class TenantCreate(BaseModel):
    """Create a tenant."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "acme"}]})

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")


class TenantCreated(BaseModel):
    """A new tenant and its first API key, shown this once."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ten_01j9z3k8m2v6f4q7r1s5t0w3xy",
                    "name": "acme",
                    "created_at": "2026-01-01T12:00:00Z",
                    "api_key": "hf_live_8mJq2r0XbT5kLwQ9cV3nZs7YhE1uA6dPfG4oRi",
                    "api_key_id": "key_01j9z3k8m2v6f4q7r1s5t0w3xz",
                }
            ]
        }
    )

    id: str
    name: str
    created_at: datetime
    api_key: str = Field(description="Shown only in this response; only its hash is stored.")
    api_key_id: str
