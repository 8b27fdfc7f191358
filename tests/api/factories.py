"""Builders of images, zips (honest and hostile) and multipart uploads for the API tests."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

ZipEntry = tuple[str, bytes]


def png(width: int = 96, height: int = 96, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """An RGB PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(width: int = 96, height: int = 80, color: tuple[int, int, int] = (20, 120, 220)) -> bytes:
    """An RGB JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def cmyk_jpeg(width: int = 80, height: int = 80) -> bytes:
    """A CMYK JPEG (print workflows produce these)."""
    buf = io.BytesIO()
    Image.new("CMYK", (width, height), (10, 200, 30, 5)).save(buf, format="JPEG")
    return buf.getvalue()


def png16(width: int = 72, height: int = 72) -> bytes:
    """A 16-bit greyscale PNG with a gradient."""
    im = Image.new("I;16", (width, height))
    im.putdata([(x * 900 + y * 13) % 65536 for y in range(height) for x in range(width)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 1-bit PNG declaring ``width x height`` pixels whose zero data compresses to almost nothing."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def make_zip(entries: Sequence[ZipEntry | zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    """A zip of ``(name, data)`` entries (deflated), or ``(ZipInfo, data)`` for crafted headers."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                zf.writestr(entry, b"")
                continue
            name, data = entry
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    """A ZipInfo marked as a Unix symbolic link."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16) & 0xFFFF0000
    return info


def set_flags(archive: bytes, name: str, flags: int) -> bytes:
    """Set general-purpose flag bits (e.g. 0x1, "encrypted") of member ``name`` in both of its headers."""
    data = bytearray(archive)
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(name)
    (cd_offset,) = struct.unpack("<I", data[data.rfind(b"PK\x05\x06") + 16 :][:4])
    at = cd_offset
    while data[at : at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[at + 28 : at + 34])
        if data[at + 46 : at + 46 + name_len] == name.encode():
            for flag_at in (at + 8, info.header_offset + 6):
                (old,) = struct.unpack("<H", data[flag_at : flag_at + 2])
                data[flag_at : flag_at + 2] = struct.pack("<H", old | flags)
            return bytes(data)
        at += 46 + name_len + extra_len + comment_len
    raise KeyError(name)


def zeros_zip(name: str, size: int) -> bytes:
    """An honest zip of one member of ``size`` zero bytes (a classic zip bomb when large)."""
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open(name, "w", force_zip64=size > 2**31) as f,
    ):
        chunk = b"\x00" * (1024 * 1024)
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return buf.getvalue()


def lying_zip(name: str, real_size: int, claimed_size: int) -> bytes:
    """A zip whose member inflates to ``real_size`` zero bytes while its headers claim ``claimed_size``."""
    data = bytearray(zeros_zip(name, real_size))
    (cd_offset,) = struct.unpack("<I", data[data.rfind(b"PK\x05\x06") + 16 :][:4])
    assert data[0:4] == b"PK\x03\x04" and data[cd_offset : cd_offset + 4] == b"PK\x01\x02"
    data[22:26] = struct.pack("<I", claimed_size)  # local header: uncompressed size
    data[cd_offset + 24 : cd_offset + 28] = struct.pack("<I", claimed_size)  # central directory entry
    return bytes(data)


def upload(
    client: TestClient,
    headers: dict[str, str],
    *,
    archive: bytes | None = None,
    archive_name: str = "dataset.zip",
    files: Sequence[tuple[str, bytes]] = (),
    **fields: Any,
) -> Any:
    """``POST /v1/datasets`` with an archive or files and form fields."""
    # Text fields as parts too, so the body is multipart even when no file is sent.
    parts: list[tuple[str, Any]] = [(key, (None, str(value))) for key, value in fields.items()]
    if archive is not None:
        parts.append(("archive", (archive_name, archive, "application/zip")))
    parts.extend(("files", (name, data, "application/octet-stream")) for name, data in files)
    if not parts:
        parts.append(("name", (None, "empty")))
    return client.post("/v1/datasets", headers=headers, files=parts)
