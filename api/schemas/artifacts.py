"""Response models of ``/v1/jobs/{id}/artifacts``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ArtifactKind = Literal[
    "hypernetwork",
    "hypernetwork_safetensors",
    "checkpoint",
    "optimizer_state",
    "sample_image",
    "sample_grid",
    "comparison_grid",
    "loss_log",
    "loss_plot",
    "training_config",
]

_ARTIFACT_EXAMPLE: dict[str, Any] = {
    "id": "art_01j9z3q2r4s6t8v0w2x4y6z8ab",
    "kind": "hypernetwork",
    "name": "inkwash.pt",
    "step": 10000,
    "bytes": 87766742,
    "sha256": "9f2c" + "0" * 60,
    "content_type": "application/octet-stream",
    "created_at": "2025-01-01T13:00:00Z",
}


class Artifact(BaseModel):
    """A file a job produced; download it from ``/v1/artifacts/{id}/content``."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ARTIFACT_EXAMPLE]})

    id: str
    kind: ArtifactKind
    name: str
    step: int | None = Field(description="The training step it belongs to (null when none).")
    bytes: int
    sha256: str
    content_type: str
    created_at: datetime


class ArtifactList(BaseModel):
    """A job's artifacts, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_ARTIFACT_EXAMPLE], "has_more": False}]}
    )

    data: list[Artifact]
    has_more: bool
    next_cursor: str | None = Field(None, description="Pass as `after` for the next page.")
