"""Writing torch files A1111's safe loader accepts: atomic, and with only the zip entries it allows.

Recent torch writes ``byteorder``, ``.data/serialization_id``, ``.format_version`` and
``.storage_alignment`` besides ``data.pkl``, ``version`` and ``data/<n>``; A1111 refuses any
entry outside ``<root>/data.pkl``, ``<root>/version``, ``<root>/data/<digits>`` (spec §3).
So every torch file we write is saved by torch, then copied entry by entry into a new zip
that keeps only those, stored uncompressed, with each tensor's data 64-byte aligned as torch
aligns it (``torch.load(mmap=True)`` maps the storages straight from the file).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ALLOWED_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
ROOT = "archive"  # the root folder torch itself uses for in-memory saves; independent of temp names
_ALIGN = 64
_LOCAL_HEADER = 30
_PAD_FIELD_ID = 0x4246  # b"FB", the extra field id torch's writer pads with
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # no timestamps: the same content gives the same sha256


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> str:
    """Call ``write(temp_path)`` beside ``path``, fsync, then os.replace; return the file's sha256."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # mkstemp makes the file owner-only; a hypernetwork is meant to be shared (A1111 may run
        # as another user), so give it the usual permissions of a new file.
        os.chmod(tmp, 0o644)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def rewrite_zip(src: str, dst: str) -> None:
    """Copy the allowed entries of torch's zip ``src`` into ``dst`` (stored, root ``archive``)."""
    with zipfile.ZipFile(src) as zin, open(dst, "wb") as raw, zipfile.ZipFile(raw, "w") as zout:
        for info in zin.infolist():
            if ALLOWED_ENTRY.match(info.filename) is None:
                continue
            rest = info.filename.split("/", 1)[1]
            out = zipfile.ZipInfo(f"{ROOT}/{rest}", date_time=_FIXED_DATE)
            out.compress_type = zipfile.ZIP_STORED
            out.create_system = 0  # the same bytes on every platform
            out.file_size = info.file_size
            if rest.startswith("data/"):
                # Pad the local header's extra field so the tensor bytes start 64-byte aligned.
                start = raw.tell() + _LOCAL_HEADER + len(out.filename.encode())
                if start % _ALIGN:
                    pad = (-(start + 4)) % _ALIGN
                    out.extra = struct.pack("<HH", _PAD_FIELD_ID, pad) + b"Z" * pad
            with zin.open(info) as reader, zout.open(out, "w") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
            # The padding is only needed in the local header; the central directory omits it, as torch's.
            out.extra = b""


def save_torch_file(obj: Any, path: str | os.PathLike[str]) -> str:
    """torch.save ``obj`` to ``path`` as A1111 accepts it, atomically; return the sha256 written."""
    target = Path(path)

    def write(tmp: str) -> None:
        fd, staged = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".torch")
        os.close(fd)
        try:
            torch.save(obj, staged)
            rewrite_zip(staged, tmp)
        finally:
            Path(staged).unlink(missing_ok=True)

    return atomic_write(target, write)
