"""Response models of ``/v1/models`` and the admin route that registers one."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_EXAMPLE: dict[str, Any] = {
    "id": "mdl_01j9z3k8m2v6f4q7r1s5t0w3xy",
    "name": "sd15",
    "arch": "sd1",
    "format": "diffusers",
    "sha256_short": "6ce0161689",
    "created_at": "2026-01-01T12:00:00Z",
}


class BaseModelOut(BaseModel):
    """A base model jobs can train on; a job's `base_model` is its `id` or its `name`."""

    model_config = ConfigDict(json_schema_extra={"examples": [MODEL_EXAMPLE]})

    id: str
    name: str
    arch: Literal["sd1", "sd2", "sdxl"]
    format: Literal["diffusers", "single_file"]
    sha256_short: str | None = Field(description="First 10 hex digits of the sha256 (A1111's model hash).")
    created_at: datetime


class BaseModelList(BaseModel):
    """Every registered base model."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [MODEL_EXAMPLE]}]})

    data: list[BaseModelOut]


class BaseModelCreate(BaseModel):
    """Register a base model (admin). `uri` is a local path the workers can read, or `s3://` / `https://`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "sd15", "uri": "/models/stable-diffusion-v1-5", "arch": "sd1"}]
        },
    )

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    uri: str = Field(min_length=1, max_length=2000, pattern=r"^[^\x00-\x1f\x7f]+$")
    arch: Literal["sd1", "sd2", "sdxl"] | None = Field(
        None, description="Detected from the files when omitted."
    )
    format: Literal["diffusers", "single_file"] | None = Field(None, description="Detected when omitted.")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{10,64}$",
        description="Known hash (required to show one for remote URIs).",
    )
