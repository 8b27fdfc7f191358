"""The filesystem object store of local mode: one file per key under a root folder.

Keys are validated (``check_key``) and the resolved path is checked to stay under the root, so no
key can address a file outside it. Writes go to a temporary file beside the target and are renamed
into place, so a reader never sees half an object.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from api.storage.base import (
    CHUNK_BYTES,
    InvalidKeyError,
    ObjectMeta,
    ObjectNotFoundError,
    StorageError,
    StoredObject,
    check_key,
    check_prefix,
)

_META_SUFFIX = ".content-type"


class FilesystemObjectStore:
    """An ``ObjectStore`` in a local folder (local mode, tests)."""

    def __init__(self, root: Path) -> None:
        # Created on first write (or by ``check``), so building an app has no side effects on disk.
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        check_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKeyError(f"key {key!r} escapes the store")
        return path

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Copy ``stream`` in chunks to a temporary file, then rename it into place."""
        path = self._path(key)
        digest = hashlib.sha256()
        size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := stream.read(CHUNK_BYTES):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            Path(str(path) + _META_SUFFIX).write_text(content_type, encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"write of {key} failed: {exc}") from exc
        return StoredObject(key=key, bytes=size, sha256=digest.hexdigest())

    def put_file(
        self, key: str, path: Path, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Copy a local file into the store."""
        with path.open("rb") as f:
            return self.put_stream(key, f, content_type=content_type)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Write small bytes."""
        return self.put_stream(key, io.BytesIO(data), content_type=content_type)

    def head(self, key: str) -> ObjectMeta | None:
        """Size and content type, or None."""
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        meta = Path(str(path) + _META_SUFFIX)
        content_type = meta.read_text(encoding="utf-8") if meta.exists() else "application/octet-stream"
        return ObjectMeta(key=key, bytes=size, content_type=content_type)

    def iter_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream ``start..end`` (inclusive) from the file in chunks."""
        path = self._path(key)
        try:
            f = path.open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(key) from exc
        with f:
            f.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def download_to(self, key: str, path: Path) -> None:
        """Copy the object's file to ``path``."""
        source = self._path(key)
        if not source.exists():
            raise ObjectNotFoundError(key)
        tmp = path.with_name(path.name + ".part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)

    def delete(self, key: str) -> None:
        """Remove the object's file."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        Path(str(path) + _META_SUFFIX).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``."""
        count = 0
        for key in list(self.list_keys(prefix)):
            self.delete(key)
            count += 1
        folder = self._path(check_prefix(prefix) + "x").parent
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        return count

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys of the files under ``prefix``."""
        folder = self._path(check_prefix(prefix) + "x").parent
        if not folder.is_dir():
            return
        for path in folder.rglob("*"):
            if (
                path.is_file()
                and not path.name.endswith(_META_SUFFIX)
                and not path.name.startswith(".upload-")
            ):
                yield path.relative_to(self.root).as_posix()

    def presigned_get_url(
        self, key: str, *, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """None: the API streams filesystem objects itself."""
        self._path(key)
        return None

    def check(self) -> None:
        """The root must be (or become) a writable folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.root}: {exc}") from exc
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not a writable folder")
