"""Stream a ``multipart/form-data`` body to disk with bounded memory.

Starlette's form parser keeps up to 1 MiB of every file part in memory (a SpooledTemporaryFile each),
so ten thousand small files cost their whole size in RAM. This parser writes every file part to its
own file in a private temporary folder as the bytes arrive, holding at most ``FLUSH_BYTES`` in memory,
with the disk writes done in a worker thread. File names sent by the client are kept as strings
only; the files on disk are named ``part-00001`` ... and never after anything the client sent.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import unquote

import anyio.to_thread
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from api.errors import BadRequestProblem, PayloadTooLargeProblem, UnsupportedMediaTypeProblem, json_pointer

FLUSH_BYTES: Final = 1024 * 1024
MAX_FIELD_BYTES: Final = 4096
MAX_FIELDS: Final = 32
_FILENAME_STAR: Final = re.compile(r"filename\*\s*=\s*([^;]+)", re.IGNORECASE)


@dataclass
class SpooledFile:
    """One file part: the form field, the client's file name (a string, never a path) and where it lies."""

    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class SpooledForm:
    """A parsed form: text fields and spooled files; ``cleanup()`` removes the files."""

    folder: Path
    fields: dict[str, str] = field(default_factory=dict)
    files: list[SpooledFile] = field(default_factory=list)

    def cleanup(self) -> None:
        """Delete the spooled files."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _decode_filename(disposition: bytes, raw: bytes | None) -> str:
    """The part's file name: RFC 5987 ``filename*`` first, else ``filename`` as UTF-8 (what browsers send)."""
    star = _FILENAME_STAR.search(disposition.decode("latin-1"))
    if star:
        value = star.group(1).strip().strip('"')
        charset, _, rest = value.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass  # a broken filename* falls back to the plain parameter
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Spooler:
    """python-multipart callbacks that route file bytes to files and field bytes to memory."""

    def __init__(self, folder: Path, max_files: int) -> None:
        self.form = SpooledForm(folder=folder)
        self.max_files = max_files
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field_name = ""
        self._field_data = bytearray()
        self._file: SpooledFile | None = None
        self._handle: BinaryIO | None = None
        # Bytes waiting to be written, and files waiting to be closed, after the current chunk.
        self.pending: list[tuple[BinaryIO, bytes]] = []
        self.to_close: list[BinaryIO] = []
        self.pending_bytes = 0
        self.open_handles: list[BinaryIO] = []
        self.ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._file = None
        self._handle = None
        self._field_data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise BadRequestProblem("a multipart part has no field name", code="invalid_multipart")
        self._field_name = name.decode("utf-8", errors="replace")
        if b"filename" in options or b"filename*" in self._disposition.lower():
            if len(self.form.files) >= self.max_files:
                raise PayloadTooLargeProblem(
                    f"more than {self.max_files} files in one upload; send a zip archive",
                    code="too_many_files",
                )
            path = self.form.folder / f"part-{len(self.form.files) + 1:05d}"
            self._file = SpooledFile(
                field=self._field_name,
                filename=_decode_filename(self._disposition, options.get(b"filename")),
                path=path,
            )
            self._handle = path.open("wb")
            self.open_handles.append(self._handle)
            self.form.files.append(self._file)
        elif len(self.form.fields) >= MAX_FIELDS:
            raise PayloadTooLargeProblem(f"more than {MAX_FIELDS} form fields", code="too_many_fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None and self._handle is not None:
            self._file.size += len(chunk)
            self.pending.append((self._handle, bytes(chunk)))
            self.pending_bytes += len(chunk)
            return
        if len(self._field_data) + len(chunk) > MAX_FIELD_BYTES:
            raise PayloadTooLargeProblem(
                f"form field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes",
                code="field_too_large",
                pointer=json_pointer([self._field_name]),
            )
        self._field_data.extend(chunk)

    def on_part_end(self) -> None:
        if self._handle is not None:
            self.to_close.append(self._handle)
            return
        value = self._field_data.decode("utf-8", errors="replace")
        if self._field_name in self.form.fields:
            raise BadRequestProblem(
                f"form field {self._field_name!r} is given twice",
                code="duplicate_field",
                pointer=json_pointer([self._field_name]),
            )
        self.form.fields[self._field_name] = value

    def flush(self) -> None:
        """Write the pending bytes and close finished files (runs in a worker thread)."""
        for handle, chunk in self.pending:
            handle.write(chunk)
        for handle in self.to_close:
            handle.close()
        self.pending.clear()
        self.to_close.clear()
        self.pending_bytes = 0

    def close_all(self) -> None:
        """Close every file handle (on error)."""
        for handle in self.open_handles:
            handle.close()


async def spool_multipart(
    content_type: str | None, stream: AsyncIterator[bytes], *, max_files: int, tmp_dir: Path | None = None
) -> SpooledForm:
    """Parse a multipart body from ``stream`` into a ``SpooledForm`` (the caller must ``cleanup()``)."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaTypeProblem("send multipart/form-data", code="unsupported_media_type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequestProblem("the multipart Content-Type has no boundary", code="invalid_multipart")
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="hf-upload-", dir=tmp_dir))
    spooler = _Spooler(folder, max_files)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": spooler.on_part_begin,
            "on_part_data": spooler.on_part_data,
            "on_part_end": spooler.on_part_end,
            "on_header_field": spooler.on_header_field,
            "on_header_value": spooler.on_header_value,
            "on_header_end": spooler.on_header_end,
            "on_headers_finished": spooler.on_headers_finished,
            "on_end": spooler.on_end,
        },
    )
    try:
        async for chunk in stream:
            parser.write(chunk)
            if spooler.pending_bytes >= FLUSH_BYTES or spooler.to_close:
                await anyio.to_thread.run_sync(spooler.flush)
        parser.finalize()
        await anyio.to_thread.run_sync(spooler.flush)
        if not spooler.ended:
            raise MultipartParseError("the body ended before the closing boundary")
    except MultipartParseError as exc:
        spooler.close_all()
        spooler.form.cleanup()
        raise BadRequestProblem(f"the multipart body is malformed: {exc}", code="invalid_multipart") from None
    except BaseException:
        spooler.close_all()
        spooler.form.cleanup()
        raise
    spooler.close_all()
    return spooler.form
