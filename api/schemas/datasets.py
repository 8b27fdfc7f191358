"""Response models of ``/v1/datasets``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_REPORT_EXAMPLE: dict[str, Any] = {
    "accepted": 2,
    "rejected": [
        {
            "file": "notes/readme.png",
            "code": "not_an_image",
            "detail": "the content is not a recognised image",
        }
    ],
    "sizes": {"512x512": 2},
    "captions": {"with_txt": 2, "from_filename": 0, "empty": 0, "tokens_max": 9, "over_limit": 0},
    "warnings": [
        {"code": "unpaired_caption", "detail": "1 .txt file(s) match no image", "files": ["extra.txt"]}
    ],
    "ignored": [{"file": "__MACOSX/._cat.png", "reason": "macOS metadata folder"}],
    "total_bytes": 402311,
    "caption_source": "txt",
}
DATASET_EXAMPLE: dict[str, Any] = {
    "id": "ds_01j9z3k8m2v6f4q7r1s5t0w3xy",
    "name": "inkwash",
    "status": "ready",
    "image_count": 2,
    "caption_count": 2,
    "bytes": 402811,
    "sha256": "9f2c0d9e1b7c4b1e8a6f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f",
    "end_user_id": "user_42",
    "created_at": "2026-01-01T12:00:00Z",
    "report": _REPORT_EXAMPLE,
}


class Rejection(BaseModel):
    """A file that was not used, with a stable code."""

    file: str
    code: str = Field(examples=["not_an_image", "unsafe_path", "decompression_bomb", "too_small"])
    detail: str


class ReportWarning(BaseModel):
    """Something usable but worth a look."""

    code: str = Field(examples=["caption_too_long", "unpaired_caption", "duplicate_image"])
    detail: str
    files: list[str] = Field(default_factory=list, description="At most 50 of the files concerned.")


class DatasetReport(BaseModel):
    """What validation found: counts, every rejected file with its reason, sizes and warnings."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [_REPORT_EXAMPLE]})

    accepted: int = Field(description="Usable images.")
    rejected: list[Rejection] = Field(description="Files not used (the first 1000; see `rejected_total`).")
    sizes: dict[str, int] = Field(description="Accepted images per `WxH`.")
    warnings: list[ReportWarning]
    captions: dict[str, Any] = Field(default_factory=dict, description="Caption sources and token lengths.")
    ignored: list[dict[str, str]] = Field(
        default_factory=list, description="Junk skipped (`__MACOSX`, dot-files)."
    )
    total_bytes: int = Field(0, description="Bytes of the accepted images.")
    caption_source: Literal["txt", "filename"] = "txt"
    rejected_total: int = Field(0, description="All rejected files, listed or not.")


class Dataset(BaseModel):
    """A validated dataset; `invalid` ones (no usable image) keep their report but cannot be trained on."""

    model_config = ConfigDict(json_schema_extra={"examples": [DATASET_EXAMPLE]})

    id: str = Field(examples=["ds_01j9z3k8m2v6f4q7r1s5t0w3xy"])
    name: str
    status: Literal["ready", "invalid"]
    image_count: int
    caption_count: int = Field(description="Images whose caption came from a `.txt` file.")
    bytes: int = Field(description="Size of the stored dataset archive.")
    sha256: str | None = Field(description="sha256 of the stored dataset archive; null when invalid.")
    end_user_id: str | None
    created_at: datetime
    report: DatasetReport


class DatasetList(BaseModel):
    """One page of datasets, newest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [DATASET_EXAMPLE], "has_more": False, "next_cursor": None}]}
    )

    data: list[Dataset]
    has_more: bool
    next_cursor: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page."
    )
