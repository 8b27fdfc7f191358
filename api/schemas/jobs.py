"""Request and response models of ``/v1/jobs`` (the job object exactly as service-api.md lists it)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from core.spec import TrainingSpec

JobStatusValue = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]

SPEC_EXAMPLE: dict[str, Any] = {
    "name": "inkwash",
    "dataset_id": "ds_01j9z3k8m2v6f4q7r1s5t0w3xy",
    "base_model": "sd15",
    "hypernetwork": {"layer_structure": [1, 2, 1], "activation_func": "relu"},
    "training": {"learn_rate": "5e-6", "steps": 10000, "batch_size": 1},
    "checkpoints": {"save_every": 500},
    "samples": {"every": 500, "prompts": [{"prompt": "a castle, inkwash style", "seed": 1}]},
    "end_user_id": "user_42",
    "metadata": {"order": "A-17"},
}


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace ``#/$defs/X`` references by copies of X (the spec has no recursive types)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]), defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def training_spec_schema() -> dict[str, Any]:
    """The JSON schema of the training spec, self-contained, for the OpenAPI request bodies."""
    raw = TypeAdapter(TrainingSpec).json_schema()
    schema: dict[str, Any] = _inline_refs(raw, raw.get("$defs", {}))
    # The API needs what the CLI may leave out (it passes paths there).
    schema["required"] = ["dataset_id", "base_model"]
    for field in ("dataset_id", "base_model"):
        schema["properties"][field] = {"type": "string", "minLength": 1, "maxLength": 200}
    schema["examples"] = [SPEC_EXAMPLE]
    return schema


def spec_request_body() -> dict[str, Any]:
    """``openapi_extra`` documenting a training spec body (parsed by ``core.spec.parse_spec``)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": training_spec_schema()}},
        }
    }


class JobProgress(BaseModel):
    """How far a job has got; the worker updates it about once a second."""

    step: int = Field(0, description="Optimizer steps done.")
    total_steps: int = Field(0, description="Steps the job will run.")
    loss: float | None = Field(None, description="Recent mean loss.")
    learn_rate: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = Field(None, description="Estimated seconds to completion.")


class JobError(BaseModel):
    """Why a job failed: a stable code and a readable message."""

    code: str
    message: str


_JOB_EXAMPLE: dict[str, Any] = {
    "id": "job_01j9z3m1x5b2c7d9e4f6g8h0jk",
    "name": "inkwash",
    "status": "running",
    "created_at": "2025-01-01T12:00:00Z",
    "started_at": "2025-01-01T12:00:03Z",
    "finished_at": None,
    "dataset_id": "ds_01j9z3k8m2v6f4q7r1s5t0w3xy",
    "base_model": "mdl_01j9z3a0a0a0a0a0a0a0a0a0a0",
    "spec": {"name": "inkwash", "dataset_id": "ds_01j9z3k8m2v6f4q7r1s5t0w3xy", "base_model": "sd15"},
    "resolved_spec": {"name": "inkwash", "training": {"steps": 10000, "learn_rate": "5e-6"}},
    "progress": {
        "step": 1200,
        "total_steps": 10000,
        "loss": 0.113,
        "learn_rate": 5e-6,
        "samples_per_second": 6.1,
        "eta_seconds": 1443.0,
    },
    "attempt": 1,
    "resumed_from_step": None,
    "error": None,
    "artifacts_url": "/v1/jobs/job_01j9z3m1x5b2c7d9e4f6g8h0jk/artifacts",
    "end_user_id": "user_42",
    "metadata": {"order": "A-17"},
}


class Job(BaseModel):
    """A training job."""

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: str
    name: str
    status: JobStatusValue
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dataset_id: str
    base_model: str = Field(description="The base model's id.")
    spec: dict[str, Any] = Field(description="The spec as submitted.")
    resolved_spec: dict[str, Any] = Field(
        description="The spec with every default filled in for the base model."
    )
    progress: JobProgress
    attempt: int = Field(description="Runs started so far (0 while first queued).")
    resumed_from_step: int | None = Field(description="The checkpoint step the latest run resumed from.")
    error: JobError | None
    artifacts_url: str
    end_user_id: str | None
    metadata: dict[str, Any]


class JobList(BaseModel):
    """One page of jobs, newest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_JOB_EXAMPLE], "has_more": True, "next_cursor": "am9i..."}]}
    )

    data: list[Job]
    has_more: bool
    next_cursor: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page."
    )


class JobEstimate(BaseModel):
    """Rough sizes and duration of a job."""

    hypernetwork_bytes: int = Field(description="Size of the final hypernetwork file.")
    optimizer_bytes: int = Field(description="Size of one saved optimizer state (`.pt.optim`).")
    steps: int
    seconds: float = Field(description="Rough training time on a current datacentre GPU.")


class JobValidation(BaseModel):
    """What a spec resolves to, its warnings and an estimate; nothing is written."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "resolved_spec": _JOB_EXAMPLE["resolved_spec"],
                    "warnings": ["10,000-20,000 steps is usual"],
                    "estimate": {
                        "hypernetwork_bytes": 87766742,
                        "optimizer_bytes": 175518720,
                        "steps": 10000,
                        "seconds": 600.0,
                    },
                }
            ]
        }
    )

    resolved_spec: dict[str, Any]
    warnings: list[str]
    estimate: JobEstimate


class CancelRequest(BaseModel):
    """Options of a cancellation."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"save_checkpoint": True}]})

    save_checkpoint: bool = Field(
        False, description="Save a checkpoint at the step where a running job stops."
    )
