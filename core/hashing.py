"""Checkpoint hashes as A1111 writes them into hypernetwork files (``sd_checkpoint``).

A1111's "short hash" of a checkpoint is the first 10 hex digits of the SHA-256
of the whole file. A diffusers folder has no single file, so we hash a canonical
digest instead (see ``folder_sha256``); it is stable across copies and machines
but, by nature, matches no A1111 hash.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

SHORT_HASH_LEN = 10
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file (cached per path, size and modification time)."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """Canonical SHA-256 of a diffusers folder.

    The digest covers ``model_index.json`` and every regular file, hidden ones
    excepted, inside the component folders it names (``unet``, ``vae``, ...):
    the SHA-256 of the UTF-8 text made of one line ``<relative posix path>\\0<file sha256>\\n``
    per file, in sorted path order. Files outside those folders (for example a
    single-file copy of the same model beside them) do not count.
    """
    index = folder / "model_index.json"
    components = sorted(
        name
        for name, value in json.loads(index.read_text(encoding="utf-8")).items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
    )
    files = [index]
    for name in components:
        root = folder / name
        if root.is_dir():
            files += [
                p
                for p in root.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            ]
    lines = sorted(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n" for p in files)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def short_hash(path: Path) -> str:
    """A1111's short hash of a checkpoint file, or the canonical folder digest's first 10 hex digits."""
    full = folder_sha256(path) if path.is_dir() else file_sha256(path)
    return full[:SHORT_HASH_LEN]
