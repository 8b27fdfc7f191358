"""Reading an uploaded zip without trusting it.

- Member names are judged as strings (``judge_name``) and never become filesystem paths: absolute
  names, drive letters, ``..``, control characters and over-deep folders are rejected; ``__MACOSX``,
  ``.DS_Store``, ``._*`` and other dot-files are junk and skipped.
- The entry count and central directory size are read from the end record *before* ``zipfile``
  builds its index (a forged directory of millions of entries would otherwise cost their memory).
- Every member is read through a counting loop that stops at the per-member cap, the archive's
  remaining total and the compression-ratio cap, whatever the headers claim: ``zipfile`` itself
  decompresses at most the declared compressed bytes and stops at the declared size (then fails the
  CRC), so a lying header can only make a member shorter, and the counters bound the rest.
- Encrypted members, symlinks, unsupported compression and corrupt data are rejected per member;
  entries sharing one local header (overlapping zip bombs) reject the archive.
"""

from __future__ import annotations

import lzma
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from api.errors import PayloadTooLargeProblem, ValidationProblem
from api.settings import Settings

READ_CHUNK: Final = 64 * 1024
# Below this size a member may be compressed at any ratio (a text file of spaces is fine).
RATIO_GRACE_BYTES: Final = 1024 * 1024
MAX_NAME_BYTES: Final = 255
# A central directory entry is 46 bytes plus name, extra and comment; 1 KiB each is generous.
CD_BYTES_PER_MEMBER: Final = 1024
_JUNK_NAMES: Final = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
_ARCHIVE_MAGIC: Final = (
    b"PK\x03\x04",  # zip
    b"PK\x05\x06",  # empty zip
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"7z\xbc\xaf\x27\x1c",  # 7z
    b"Rar!\x1a\x07",  # rar
    b"\x28\xb5\x2f\xfd",  # zstd
)


class MemberRejectedError(Exception):
    """One member cannot be used; ``code`` is stable, ``detail`` is for humans."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class JunkMemberError(Exception):
    """A member that is operating-system clutter (``__MACOSX``, ``.DS_Store``...): skipped silently."""


@dataclass(frozen=True)
class ArchiveLimits:
    """The caps an archive must stay under."""

    max_members: int = 10_000
    max_member_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 8 * 1024 * 1024 * 1024
    max_ratio: int = 200
    max_depth: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        """The limits configured in settings."""
        return cls(
            max_members=settings.archive_max_members,
            max_member_bytes=settings.archive_max_member_bytes,
            max_total_bytes=settings.archive_max_total_bytes,
            max_ratio=settings.archive_max_ratio,
            max_depth=settings.archive_max_depth,
        )


def judge_name(raw: str, *, max_depth: int) -> tuple[str, ...]:
    """The safe components of a member name, or raise ``MemberRejectedError`` / ``JunkMemberError``.

    The result is only ever used as strings (for matching captions and naming entries of the archive
    we write); it is never joined onto a filesystem path.
    """
    name = unicodedata.normalize("NFC", raw).replace("\\", "/")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise MemberRejectedError("invalid_name", "the name contains control characters")
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":" and name[0].isalpha()):
        raise MemberRejectedError("unsafe_path", "absolute paths are not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MemberRejectedError("unsafe_path", "'..' in a name is not allowed")
    if not parts:
        raise MemberRejectedError("invalid_name", "the name is empty")
    if any(p.startswith(".") or p.lower() in _JUNK_NAMES for p in parts):
        raise JunkMemberError(name)
    if len(parts) - 1 > max_depth:
        raise MemberRejectedError("path_too_deep", f"nested deeper than {max_depth} folders")
    if any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts):
        raise MemberRejectedError("invalid_name", f"a name part is longer than {MAX_NAME_BYTES} bytes")
    return tuple(parts)


def looks_like_archive(head: bytes) -> bool:
    """True when the first bytes are an archive or compressed stream's signature (tar included)."""
    return head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name; names without the UTF-8 flag that are valid UTF-8 are read as UTF-8.

    Many zip tools write UTF-8 names without setting the flag, which ``zipfile`` then reads as
    cp437 (turning Chinese names into mojibake).
    """
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _end_record(f: BinaryIO) -> tuple[int, int]:
    """(entries, central directory bytes) from the end-of-central-directory record (zip64 aware)."""
    f.seek(0, 2)
    size = f.tell()
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise ValidationProblem("the archive is not a zip file", code="invalid_archive", pointer="/archive")
    _, _, _, _, entries, cd_size, _, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        locator_at = size - tail_len + at - 20
        if locator_at < 0:
            raise ValidationProblem(
                "the zip64 end record is missing", code="invalid_archive", pointer="/archive"
            )
        f.seek(locator_at)
        locator = f.read(20)
        if not locator.startswith(b"PK\x06\x07"):
            raise ValidationProblem(
                "the zip64 end record is missing", code="invalid_archive", pointer="/archive"
            )
        (record_at,) = struct.unpack("<Q", locator[8:16])
        f.seek(record_at)
        record = f.read(56)
        if not record.startswith(b"PK\x06\x06") or len(record) < 56:
            raise ValidationProblem(
                "the zip64 end record is corrupt", code="invalid_archive", pointer="/archive"
            )
        entries, cd_size = struct.unpack("<QQ", record[32:48])
    return int(entries), int(cd_size)


class SafeZip:
    """A zip opened under ``ArchiveLimits``; iterate ``members()`` and ``read()`` each one."""

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.total_read = 0
        self._file = path.open("rb")
        try:
            entries, cd_size = _end_record(self._file)
            if entries > limits.max_members:
                raise PayloadTooLargeProblem(
                    f"the archive has {entries} entries; at most {limits.max_members} are accepted",
                    code="too_many_members",
                )
            if cd_size > max(entries, 1) * CD_BYTES_PER_MEMBER + 65536:
                raise ValidationProblem(
                    "the archive's directory is far larger than its entries need",
                    code="invalid_archive",
                    pointer="/archive",
                )
            self._file.seek(0)
            try:
                self.zip = zipfile.ZipFile(self._file)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
                raise ValidationProblem(
                    f"the archive cannot be read: {exc}", code="invalid_archive", pointer="/archive"
                ) from None
            infos = self.zip.infolist()
            if len(infos) > limits.max_members:
                raise PayloadTooLargeProblem(
                    f"the archive has more than {limits.max_members} entries", code="too_many_members"
                )
            offsets = [i.header_offset for i in infos]
            if len(set(offsets)) != len(offsets):
                raise ValidationProblem(
                    "several entries share one stored file (an overlapping zip bomb)",
                    code="invalid_archive",
                    pointer="/archive",
                )
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the archive."""
        self.zip.close()
        self._file.close()

    def members(self) -> Iterator[tuple[str, zipfile.ZipInfo]]:
        """(decoded name, info) of every entry that is not a folder."""
        for info in self.zip.infolist():
            if not info.is_dir():
                yield _member_name(info), info

    def check(self, info: zipfile.ZipInfo) -> None:
        """Reject a member by its header alone: encrypted, symlink, declared too large or too compressed."""
        if info.flag_bits & 0x1:
            raise MemberRejectedError("encrypted", "encrypted members are not accepted")
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise MemberRejectedError("symlink", "symbolic links are not accepted")
        if info.file_size > self.limits.max_member_bytes:
            raise MemberRejectedError(
                "member_too_large",
                f"{info.file_size} bytes is over the limit of {self.limits.max_member_bytes}",
            )
        if info.file_size > RATIO_GRACE_BYTES and info.file_size > self.limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise MemberRejectedError(
                "compression_ratio", f"compressed more than {self.limits.max_ratio}:1 (a zip bomb?)"
            )

    def read(self, info: zipfile.ZipInfo) -> bytes:
        """The member's bytes, read under every cap whatever its headers say."""
        self.check(info)
        limits = self.limits
        compressed = max(info.compress_size, 1)
        out = bytearray()
        try:
            with self.zip.open(info) as stream:
                while chunk := stream.read(READ_CHUNK):
                    out += chunk
                    self.total_read += len(chunk)
                    if len(out) > limits.max_member_bytes:
                        raise MemberRejectedError(
                            "member_too_large", f"more than {limits.max_member_bytes} bytes uncompressed"
                        )
                    if len(out) > RATIO_GRACE_BYTES and len(out) > limits.max_ratio * compressed:
                        raise MemberRejectedError(
                            "compression_ratio", f"decompresses more than {limits.max_ratio}:1 (a zip bomb?)"
                        )
                    if self.total_read > limits.max_total_bytes:
                        raise PayloadTooLargeProblem(
                            f"the archive holds more than {limits.max_total_bytes} bytes uncompressed",
                            code="archive_too_large",
                        )
        except NotImplementedError as exc:
            raise MemberRejectedError("unsupported_compression", str(exc)) from None
        except RuntimeError as exc:  # zipfile's "encrypted, password required"
            raise MemberRejectedError("encrypted", str(exc)) from None
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise MemberRejectedError("corrupt_member", f"cannot be read: {exc}") from None
        return bytes(out)
