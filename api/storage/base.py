"""The object store contract, its errors and the key rules every backend shares.

Keys are built by ``tenant_key`` from ids and fixed words, never from anything a client
sent, and every backend calls ``check_key`` before touching storage: a key is
``tenants/<tenant_id>/<part>/...`` with each part made of ``[A-Za-z0-9._-]`` and never ``.``
or ``..``. A client-supplied file name never becomes a key or a path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol, runtime_checkable
from urllib.parse import quote

CHUNK_BYTES: Final = 1024 * 1024
_PART_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TENANT_RE: Final = re.compile(r"^ten_[0-9a-z]{26}$")
MAX_KEY_LENGTH: Final = 1024


class StorageError(Exception):
    """The object store failed (unreachable, refused, misconfigured)."""


class ObjectNotFoundError(StorageError):
    """No object under this key."""


class InvalidKeyError(StorageError, ValueError):
    """A key breaks the key rules (a programming error: keys are built, never received)."""


@dataclass(frozen=True)
class StoredObject:
    """What a write produced: the key, its size and the sha256 of its bytes."""

    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ObjectMeta:
    """An existing object's size and content type."""

    key: str
    bytes: int
    content_type: str


def check_key(key: str) -> str:
    """Return ``key`` when it is a valid tenant-namespaced key, else raise ``InvalidKeyError``."""
    parts = key.split("/")
    if (
        len(key) > MAX_KEY_LENGTH
        or len(parts) < 3
        or parts[0] != "tenants"
        or not _TENANT_RE.match(parts[1])
        or not all(_PART_RE.match(p) and p not in (".", "..") for p in parts[2:])
    ):
        raise InvalidKeyError(f"invalid object key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Validate a key prefix (``tenants/<id>/...``, ending with ``/``) for listing or deleting."""
    if not prefix.endswith("/"):
        raise InvalidKeyError(f"a prefix must end with '/': {prefix!r}")
    check_key(prefix + "x")
    return prefix


def tenant_key(tenant_id: str, *parts: str) -> str:
    """Build ``tenants/<tenant_id>/<parts...>`` from ids and fixed words (validated)."""
    return check_key("/".join(("tenants", tenant_id, *parts)))


def tenant_prefix(tenant_id: str, *parts: str) -> str:
    """Build ``tenants/<tenant_id>/<parts...>/`` (validated)."""
    return check_prefix("/".join(("tenants", tenant_id, *parts)) + "/")


def content_disposition(filename: str) -> str:
    """An ``attachment`` Content-Disposition with an ASCII fallback and the RFC 5987 UTF-8 name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@runtime_checkable
class ObjectStore(Protocol):
    """Where datasets and artifacts live: S3 in production, a folder in local mode."""

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Store ``stream`` (read in chunks, never whole in memory) under ``key``."""
        ...

    def put_file(
        self, key: str, path: Path, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Store the file at ``path`` under ``key``."""
        ...

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Store small ``data`` under ``key``."""
        ...

    def head(self, key: str) -> ObjectMeta | None:
        """Size and content type of ``key``, or None when absent."""
        ...

    def iter_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes ``start..end`` (inclusive; None = to the end) in chunks."""
        ...

    def download_to(self, key: str, path: Path) -> None:
        """Copy the object to the local file ``path`` (written beside, then renamed)."""
        ...

    def delete(self, key: str) -> None:
        """Delete one object (absent is fine)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many."""
        ...

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, in no particular order."""
        ...

    def presigned_get_url(
        self, key: str, *, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """A short-lived download URL, or None when the backend serves bytes itself (filesystem)."""
        ...

    def check(self) -> None:
        """Raise ``StorageError`` unless the store is reachable and usable (readiness)."""
        ...
