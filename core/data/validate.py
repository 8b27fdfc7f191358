"""Scan a dataset folder or zip: judge every image by content, pair captions, build the report.

Torch-free (the API imports it). Zip members are read in memory with size caps and
are never turned into filesystem paths. ``__MACOSX/``, ``.DS_Store``, dotfiles and
similar junk are ignored with a note; every other non-``.txt`` file is judged by
its content, so a text file named ``x.png`` is rejected as ``not_an_image``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from core.data.captions import TokenCounter, caption_from_filename, read_caption_bytes
from core.data.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    REJECTION_CODES,
    DecodedImage,
    ImageInfo,
    ImageRejectedError,
    decode_image,
    inspect_image,
)
from core.data.report import DatasetReport, DatasetWarning, Ignored, Rejection, ReportBuilder
from core.errors import DatasetError, InvalidOptionError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "REJECTION_CODES",
    "CaptionSource",
    "DatasetItem",
    "DatasetReport",
    "DatasetWarning",
    "DecodedImage",
    "Ignored",
    "ImageInfo",
    "ImageRejectedError",
    "Rejection",
    "decode_image",
    "inspect_image",
    "scan_folder",
    "scan_path",
    "scan_zip",
]

CaptionSource = Literal["txt", "filename"]
MAX_CAPTION_BYTES: Final = 1024 * 1024
MAX_ZIP_MEMBERS: Final = 100_000
MAX_ZIP_TOTAL_BYTES: Final = 16 * 1024**3
_JUNK_NAMES: Final = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})


@dataclass(frozen=True)
class DatasetItem:
    """One accepted image: where it is, its caption and its info (no pixels are kept)."""

    name: str
    caption: str
    caption_from_txt: bool
    info: ImageInfo
    source: Path
    member: str | None = None

    def read_bytes(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """The image file's bytes, from the folder or the zip member."""
        if self.member is None:
            with open(self.source / self.name, "rb") as fh:
                return fh.read(max_bytes + 1)
        with zipfile.ZipFile(self.source) as zf, zf.open(self.member) as fh:
            return fh.read(max_bytes + 1)

    def decode(self, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
        """Decode the image again (RGB + alpha, EXIF applied)."""
        return decode_image(self.read_bytes(), max_pixels=max_pixels, min_side=1)


@dataclass(frozen=True)
class _Entry:
    """A file of the dataset, independent of where it lives."""

    name: str  # posix relative path, for display and pairing
    size: int  # as declared (a zip header may lie: reads are capped anyway)
    read: Callable[[int], bytes]  # read at most n bytes
    member: str | None = None


def scan_folder(
    path: str | Path,
    caption_source: CaptionSource = "txt",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int = MIN_SIDE,
    count_tokens: TokenCounter | None = None,
) -> tuple[list[DatasetItem], DatasetReport]:
    """Scan a folder (recursively, sorted, symlinked folders not followed) into items and a report."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root}", code="dataset_not_found")
    entries = list(_folder_entries(root))
    return _scan(entries, root, caption_source, max_pixels, max_bytes, min_side, count_tokens)


def scan_zip(
    path: str | Path,
    caption_source: CaptionSource = "txt",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int = MIN_SIDE,
    count_tokens: TokenCounter | None = None,
    max_members: int = MAX_ZIP_MEMBERS,
) -> tuple[list[DatasetItem], DatasetReport]:
    """Scan a zip archive's members in memory into items and a report."""
    zpath = Path(path)
    try:
        with zipfile.ZipFile(zpath) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > max_members:
                raise DatasetError(
                    f"{len(infos)} members is over the limit of {max_members}", code="archive_too_large"
                )
            entries = list(_zip_entries(zf, infos))
            return _scan(entries, zpath, caption_source, max_pixels, max_bytes, min_side, count_tokens)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DatasetError(f"not a readable zip archive: {exc}", code="invalid_archive") from exc
    except FileNotFoundError as exc:
        raise DatasetError(f"no such archive: {zpath}", code="dataset_not_found") from exc


def scan_path(
    path: str | Path,
    caption_source: CaptionSource = "txt",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int = MIN_SIDE,
    count_tokens: TokenCounter | None = None,
) -> tuple[list[DatasetItem], DatasetReport]:
    """``scan_folder`` for a folder, ``scan_zip`` for anything else (a zip file)."""
    scan = scan_folder if Path(path).is_dir() else scan_zip
    return scan(
        path,
        caption_source,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        min_side=min_side,
        count_tokens=count_tokens,
    )


def _folder_entries(root: Path) -> Iterator[_Entry]:
    """Every file under ``root`` as an entry, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            full = Path(dirpath) / fname
            rel = full.relative_to(root).as_posix()
            yield _Entry(rel, _safe_size(full), _file_reader(full))


def _safe_size(path: Path) -> int:
    """File size, or 0 when it cannot be stat'ed (the read will then report why)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _file_reader(path: Path) -> Callable[[int], bytes]:
    """A function reading at most n bytes of ``path``."""

    def read(n: int) -> bytes:
        with open(path, "rb") as fh:
            return fh.read(n)

    return read


def _zip_entries(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> Iterator[_Entry]:
    """Zip members as entries with display names fixed up, sorted by name."""
    entries = []
    for info in infos:

        def read(n: int, info: zipfile.ZipInfo = info) -> bytes:
            with zf.open(info) as fh:
                return fh.read(n)

        entries.append(_Entry(_member_display_name(info), info.file_size, read, member=info.filename))
    yield from sorted(entries, key=lambda e: e.name)


def _member_display_name(info: zipfile.ZipInfo) -> str:
    """The member's name as a relative posix label (UTF-8 names without the UTF-8 flag repaired)."""
    name = info.filename
    if not info.flag_bits & 0x800:
        # Many tools write UTF-8 names without setting the flag; zipfile then decoded them as cp437.
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts)


def _junk_reason(name: str) -> str | None:
    """Why a file is junk to be ignored, or None when it is not."""
    parts = name.split("/")
    if parts[0] == "__MACOSX":
        return "macOS metadata folder"
    if any(p.startswith(".") for p in parts):
        return "hidden file"
    if parts[-1].lower() in _JUNK_NAMES:
        return "system file"
    return None


def _is_caption(name: str) -> bool:
    """Whether the entry is a caption file."""
    return name.lower().endswith(".txt")


def _stem_key(name: str) -> str:
    """The pairing key: the path without its extension."""
    return posixpath.splitext(name)[0]


def _scan(
    entries: list[_Entry],
    source: Path,
    caption_source: CaptionSource,
    max_pixels: int,
    max_bytes: int,
    min_side: int,
    count_tokens: TokenCounter | None,
) -> tuple[list[DatasetItem], DatasetReport]:
    """Judge the entries, pair captions and build the report."""
    if caption_source not in ("txt", "filename"):
        raise InvalidOptionError("must be 'txt' or 'filename'", option="caption_source")
    builder = ReportBuilder(count_tokens=count_tokens, caption_source=caption_source)
    captions: dict[str, _Entry] = {}
    images: list[_Entry] = []
    seen: set[str] = set()
    for entry in entries:
        reason = _junk_reason(entry.name)
        if reason is None and entry.name in seen:
            reason = "duplicate member name"
        if reason is not None:
            builder.ignore(entry.name, reason)
            continue
        seen.add(entry.name)
        if _is_caption(entry.name):
            captions[_stem_key(entry.name)] = entry
        else:
            images.append(entry)
    paired: set[str] = set()
    items: list[DatasetItem] = []
    total = 0
    for entry in images:
        try:
            data = _read_capped(entry, max_bytes, total)
            total += len(data)
            decoded = decode_image(data, max_pixels=max_pixels, min_side=min_side, max_bytes=max_bytes)
        except ImageRejectedError as exc:
            builder.reject(entry.name, exc.code, exc.detail)
            continue
        info = decoded.info
        builder.notes.extend((entry.name, note) for note in decoded.notes)
        txt = captions.get(_stem_key(entry.name))
        if txt is not None:
            paired.add(_stem_key(entry.name))
        if caption_source == "txt" and txt is not None:
            caption, clean = read_caption_bytes(txt.read(MAX_CAPTION_BYTES))
            if not clean:
                builder.bad_utf8.append(txt.name)
        else:
            caption = caption_from_filename(entry.name)
        builder.accept(entry.name, info, caption, caption_source == "txt" and txt is not None)
        items.append(
            DatasetItem(
                entry.name, caption, caption_source == "txt" and txt is not None, info, source, entry.member
            )
        )
    for key, txt in captions.items():
        if key not in paired:
            builder.unpaired_txt.append(txt.name)
        elif caption_source == "filename":
            builder.unused_txt.append(txt.name)
    return items, builder.build()


def _read_capped(entry: _Entry, max_bytes: int, total_so_far: int) -> bytes:
    """Read an entry's bytes, refusing it when it (or the archive so far) is over the caps."""
    if entry.size > max_bytes:  # the declared size: refuse without reading
        raise ImageRejectedError("too_large", f"{entry.size} bytes is over the limit of {max_bytes}")
    if total_so_far + entry.size > MAX_ZIP_TOTAL_BYTES:
        raise ImageRejectedError("too_large", f"the dataset is over {MAX_ZIP_TOTAL_BYTES} bytes in total")
    try:
        data = entry.read(max_bytes + 1)
    except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method.
        raise ImageRejectedError("undecodable", f"cannot read the file: {exc}") from exc
    if len(data) > max_bytes:
        raise ImageRejectedError("too_large", f"more than {max_bytes} bytes")
    return data
