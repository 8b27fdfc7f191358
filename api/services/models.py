"""Base model use cases: list them, and register one (operator), detecting format, arch and hash.

A local path is inspected: a folder with ``model_index.json`` is a diffusers model (arch from the
UNet's ``cross_attention_dim``), a ``.safetensors`` file is read for its JSON header only (arch from
the text encoder's tensor names), and the sha256 of the file (or of the folder's files, in name
order) gives A1111's 10-digit short hash. Remote URIs (``s3://``, ``https://``) are taken as given:
``arch`` is then required and the hash optional. Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Final

from sqlalchemy.orm import Session

from api.db.enums import ModelArch, ModelFormat
from api.db.models import BaseModelRecord
from api.db.repositories import BaseModelRepository
from api.errors import ConflictProblem, ValidationProblem
from api.schemas.models import BaseModelList, BaseModelOut
from core.hashing import SHORT_HASH_LEN, short_hash

_REMOTE: Final = re.compile(r"^(s3|https?)://", re.IGNORECASE)
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SINGLE_FILE_SUFFIXES: Final = (".safetensors", ".ckpt", ".pt", ".bin")
_CROSS_ATTENTION_ARCH: Final = {768: ModelArch.SD1, 1024: ModelArch.SD2, 2048: ModelArch.SDXL}
_MAX_HEADER_BYTES: Final = 100 * 1024 * 1024


def model_to_schema(record: BaseModelRecord) -> BaseModelOut:
    """The API view of a base model."""
    return BaseModelOut(
        id=record.id,
        name=record.name,
        arch=record.arch,  # type: ignore[arg-type]  # a CHECK constraint keeps it a valid literal
        format=record.format,  # type: ignore[arg-type]
        sha256_short=record.sha256_short,
        created_at=record.created_at,
    )


def list_models(session: Session) -> BaseModelList:
    """Every registered base model, by name."""
    return BaseModelList(data=[model_to_schema(r) for r in BaseModelRepository(session).list_all()])


def register_model(
    session: Session,
    *,
    name: str,
    uri: str,
    arch: str | None = None,
    format: str | None = None,
    sha256: str | None = None,
) -> BaseModelRecord:
    """Register a base model; commits. 409 ``model_exists`` when the name is taken."""
    if not _NAME.match(name):
        raise ValidationProblem(
            "a model name is letters, digits, '.', '_' and '-' (at most 100)",
            code="invalid_name",
            pointer="/name",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise ValidationProblem("the URI contains control characters", code="invalid_uri", pointer="/uri")
    repo = BaseModelRepository(session)
    if repo.get_by_name(name) is not None:
        raise ConflictProblem(f"a model named {name!r} is already registered", code="model_exists")
    if _REMOTE.match(uri):
        fmt = format or (
            ModelFormat.SINGLE_FILE if uri.lower().endswith(_SINGLE_FILE_SUFFIXES) else ModelFormat.DIFFUSERS
        )
        if arch is None:
            raise ValidationProblem(
                "arch is required for a remote model", code="arch_required", pointer="/arch"
            )
        short = sha256[:SHORT_HASH_LEN].lower() if sha256 else None
    else:
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise ValidationProblem(f"no file or folder at {uri}", code="model_not_found", pointer="/uri")
        # Detected even when given: it proves the path is a model before anything hashes it.
        fmt = _detect_format(path)
        if format is not None and format != fmt:
            raise ValidationProblem(f"the files are a {fmt} model", code="format_mismatch", pointer="/format")
        arch = arch or _detect_arch(path, fmt)
        short = sha256[:SHORT_HASH_LEN].lower() if sha256 else short_hash(path)
        uri = str(path.resolve())
    _check_choice(fmt, ModelFormat, "/format")
    _check_choice(arch, ModelArch, "/arch")
    record = repo.add(name=name, arch=str(arch), format=str(fmt), uri=uri, sha256_short=short)
    session.commit()
    return record


def _check_choice(value: str, enum: type[ModelArch] | type[ModelFormat], pointer: str) -> None:
    allowed = [m.value for m in enum]
    if value not in allowed:
        raise ValidationProblem(
            f"must be one of {', '.join(allowed)}", code="invalid_choice", pointer=pointer
        )


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
            return ModelFormat.DIFFUSERS
        raise ValidationProblem(
            "the folder is not a diffusers model (no model_index.json)",
            code="unknown_model_format",
            pointer="/uri",
        )
    if path.suffix.lower() in _SINGLE_FILE_SUFFIXES:
        return ModelFormat.SINGLE_FILE
    raise ValidationProblem(
        "expected a diffusers folder or a .safetensors/.ckpt file",
        code="unknown_model_format",
        pointer="/uri",
    )


def _detect_arch(path: Path, fmt: str) -> str:
    arch: str | None = None
    if fmt == ModelFormat.DIFFUSERS:
        arch = _diffusers_arch(path)
    elif path.suffix.lower() == ".safetensors":
        arch = _safetensors_arch(path)
    if arch is None:
        raise ValidationProblem(
            "cannot tell the architecture from the files; pass arch (sd1, sd2 or sdxl)",
            code="arch_required",
            pointer="/arch",
        )
    return arch


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _diffusers_arch(path: Path) -> str | None:
    index = _read_json(path / "model_index.json") or {}
    if "XL" in str(index.get("_class_name", "")):
        return ModelArch.SDXL
    unet = _read_json(path / "unet" / "config.json") or {}
    dim = unet.get("cross_attention_dim")
    return _CROSS_ATTENTION_ARCH.get(dim) if isinstance(dim, int) else None


def _safetensors_arch(path: Path) -> str | None:
    """Read only the JSON header (8-byte length, then JSON) and judge by tensor names."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    names = header.keys()
    if any(n.startswith("conditioner.embedders.1.") for n in names):
        return ModelArch.SDXL
    if any(n.startswith("cond_stage_model.model.") for n in names):
        return ModelArch.SD2  # OpenCLIP text encoder
    if any(n.startswith("cond_stage_model.transformer.") for n in names):
        return ModelArch.SD1
    return None
