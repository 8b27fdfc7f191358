"""Dataset use cases: create from an upload (zip or files), get, list, delete.

Creating a dataset never trusts the upload. Every member name is judged as a string
(``api.archive.judge_name``), every member is read under caps that hold even when zip headers
lie, every image is judged by its content with core's torch-free decoder, and captions are
paired by base name. What is usable is written, under its sanitised name, into a new zip
(``tenants/<tenant>/datasets/<id>/dataset.zip``: images stored as sent plus normalised ``.txt``
captions, fixed timestamps, so equal datasets hash equal) that core reads with ``scan_zip``.

A dataset with no usable image is still recorded, as ``invalid`` with its report (so
``GET /v1/datasets/{id}`` can show why), nothing is stored for it, and the create answers 422
``dataset_invalid`` with ``dataset_id`` and ``report`` in the problem.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy.orm import Session

from api.archive import (
    ArchiveLimits,
    JunkMemberError,
    MemberRejectedError,
    SafeZip,
    judge_name,
    looks_like_archive,
)
from api.db.enums import DatasetStatus
from api.db.models import Dataset
from api.db.repositories import DatasetRepository, JobRepository
from api.errors import ConflictProblem, NotFoundProblem, ValidationProblem, json_pointer
from api.ids import Prefix, is_valid_id, new_id
from api.schemas.datasets import Dataset as DatasetSchema
from api.schemas.datasets import DatasetList
from api.services.cursors import decode_cursor, encode_cursor
from api.settings import Settings
from api.storage import ObjectStore, StorageError, tenant_key, tenant_prefix
from core.data.captions import caption_from_filename, read_caption_bytes
from core.data.report import ReportBuilder
from core.data.validate import ImageRejectedError, decode_image

logger = logging.getLogger("api.services.datasets")

ARCHIVE_NAME: Final = "dataset.zip"
MAX_CAPTION_BYTES: Final = 1024 * 1024
MAX_REJECTIONS_LISTED: Final = 1000
CAPTION_SOURCES: Final = ("txt", "filename")
# Fixed member timestamps: the archive's bytes (and sha256) depend on its content only.
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
_FORM_FIELDS: Final = frozenset({"name", "caption_source", "end_user_id"})


@dataclass(frozen=True)
class UploadedFile:
    """A file part of the upload: the client's name (a string only) and where it was spooled."""

    filename: str
    path: Path
    size: int


@dataclass(frozen=True)
class DatasetUpload:
    """A parsed ``POST /v1/datasets``: either one archive or loose files, and the form fields."""

    name: str
    caption_source: str
    end_user_id: str | None
    archive: UploadedFile | None = None
    files: tuple[UploadedFile, ...] = ()


def parse_upload(fields: dict[str, str], files: list[tuple[str, UploadedFile]]) -> DatasetUpload:
    """Check the form: known fields only, ``archive`` xor ``files``, valid ``caption_source``."""
    for key in fields:
        if key not in _FORM_FIELDS:
            raise ValidationProblem(
                f"unknown form field {key!r}", code="unknown_field", pointer=json_pointer([key])
            )
    unknown = sorted({f for f, _ in files if f not in ("archive", "files")})
    if unknown:
        raise ValidationProblem(
            f"unknown file field {unknown[0]!r}; use 'archive' or 'files'",
            code="unknown_field",
            pointer=json_pointer([unknown[0]]),
        )
    archives = [u for f, u in files if f == "archive"]
    loose = tuple(u for f, u in files if f == "files")
    if len(archives) > 1:
        raise ValidationProblem("send one archive", code="too_many_archives", pointer="/archive")
    if archives and loose:
        raise ValidationProblem(
            "send either one archive or files, not both", code="archive_and_files", pointer="/files"
        )
    if not archives and not loose:
        raise ValidationProblem("send an archive (zip) or files", code="no_files", pointer="/files")
    caption_source = fields.get("caption_source", "txt").strip() or "txt"
    if caption_source not in CAPTION_SOURCES:
        raise ValidationProblem(
            "must be 'txt' or 'filename'", code="invalid_choice", pointer="/caption_source"
        )
    archive = archives[0] if archives else None
    # The archive's file name without folders, extension and control characters, as the default name.
    stem = posixpath.splitext(archive.filename.replace("\\", "/").rsplit("/", 1)[-1])[0] if archive else ""
    default_name = "".join(c for c in stem if not _has_control(c))[:200]
    name = (fields.get("name") or default_name or "dataset").strip()
    if len(name) > 200 or _has_control(name):
        raise ValidationProblem(
            "a name is at most 200 printable characters", code="invalid_name", pointer="/name"
        )
    end_user_id = (fields.get("end_user_id") or "").strip() or None
    if end_user_id is not None and (len(end_user_id) > 200 or _has_control(end_user_id)):
        raise ValidationProblem(
            "at most 200 printable characters", code="invalid_end_user_id", pointer="/end_user_id"
        )
    return DatasetUpload(
        name=name or "dataset",
        caption_source=caption_source,
        end_user_id=end_user_id,
        archive=archive,
        files=loose,
    )


# -- reading the upload -----------------------------------------------------------------------------


@dataclass
class _Member:
    """A candidate file: its safe relative name and a reader that applies every cap."""

    name: str
    read: Callable[[], bytes]
    declared_size: int


@dataclass
class _Scan:
    """Members sorted into captions and images, with the report collecting outcomes."""

    builder: ReportBuilder
    images: list[_Member] = field(default_factory=list)
    captions: dict[str, _Member] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def add(self, display: str, read: Callable[[], bytes], declared_size: int, max_depth: int) -> None:
        """Judge a member's name and file it as caption or image, or record why it is not used."""
        try:
            name = "/".join(judge_name(display, max_depth=max_depth))
        except JunkMemberError:
            self.builder.ignore(_label(display), "system or hidden file")
            return
        except MemberRejectedError as exc:
            self.builder.reject(_label(display), exc.code, exc.detail)
            return
        if name in self.seen:
            self.builder.reject(name, "duplicate_name", "another file has the same name")
            return
        self.seen.add(name)
        member = _Member(name=name, read=read, declared_size=declared_size)
        if name.lower().endswith(".txt"):
            self.captions[_stem(name)] = member
        else:
            self.images.append(member)


def _label(name: str) -> str:
    """A client-sent name made safe to show and store: control characters escaped, length capped.

    (Postgres cannot store NUL in text or JSONB, and a report should not carry terminal escapes.)
    """
    escaped = "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in name)
    return escaped[:300]


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _stem(name: str) -> str:
    return posixpath.splitext(name)[0]


def _file_reader(upload: UploadedFile, limits: ArchiveLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        if upload.size > limits.max_member_bytes:
            raise MemberRejectedError(
                "member_too_large", f"{upload.size} bytes is over {limits.max_member_bytes}"
            )
        return upload.path.read_bytes()

    return read


def _zip_reader(archive: SafeZip, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    return lambda: archive.read(info)


def _collect(upload: DatasetUpload, limits: ArchiveLimits, builder: ReportBuilder, stack: ExitStack) -> _Scan:
    scan = _Scan(builder=builder)
    if upload.archive is not None:
        archive = stack.enter_context(SafeZip(upload.archive.path, limits))
        for display, info in archive.members():
            scan.add(display, _zip_reader(archive, info), info.file_size, limits.max_depth)
    else:
        for item in upload.files:
            scan.add(item.filename, _file_reader(item, limits), item.size, limits.max_depth)
    scan.images.sort(key=lambda m: m.name)
    return scan


def _read_caption(member: _Member, builder: ReportBuilder) -> str | None:
    """The caption text of a ``.txt`` member, or None when it cannot be used (recorded as rejected)."""
    try:
        if member.declared_size > MAX_CAPTION_BYTES:
            raise MemberRejectedError("caption_too_large", f"a caption file over {MAX_CAPTION_BYTES} bytes")
        data = member.read()
        if len(data) > MAX_CAPTION_BYTES:
            raise MemberRejectedError("caption_too_large", f"a caption file over {MAX_CAPTION_BYTES} bytes")
    except MemberRejectedError as exc:
        builder.reject(member.name, exc.code, exc.detail)
        return None
    caption, clean = read_caption_bytes(data)
    if not clean:
        builder.bad_utf8.append(member.name)
    return caption


@dataclass(frozen=True)
class _Built:
    """The outcome of a scan: the report, counts and (when any image is usable) the archive written."""

    report: dict[str, Any]
    image_count: int
    caption_count: int
    archive: Path | None


def _build(upload: DatasetUpload, settings: Settings, workdir: Path) -> _Built:
    """Judge the upload and write the normalised archive of what is usable."""
    limits = ArchiveLimits.from_settings(settings)
    builder = ReportBuilder(caption_source=upload.caption_source)
    out_path = workdir / ARCHIVE_NAME
    with ExitStack() as stack:
        scan = _collect(upload, limits, builder, stack)
        out = stack.enter_context(zipfile.ZipFile(out_path, "w"))
        paired: set[str] = set()
        for member in scan.images:
            image = _judge_image(member, settings, limits, builder)
            if image is None:
                continue
            key = _stem(member.name)
            txt = scan.captions.get(key)
            caption: str | None = None
            if txt is not None:
                paired.add(key)
                if upload.caption_source == "txt":
                    caption = _read_caption(txt, builder)
            text = caption if caption is not None else caption_from_filename(member.name)
            builder.accept(member.name, image[1], text, caption is not None)
            out.writestr(zipfile.ZipInfo(member.name, _EPOCH), image[0], compress_type=zipfile.ZIP_STORED)
            if caption is not None:
                info = zipfile.ZipInfo(key + ".txt", _EPOCH)
                out.writestr(info, caption.encode("utf-8"), compress_type=zipfile.ZIP_DEFLATED)
        for key, txt in scan.captions.items():
            if key not in paired:
                builder.unpaired_txt.append(txt.name)
            elif upload.caption_source == "filename":
                builder.unused_txt.append(txt.name)
    report = builder.build()
    data = report.to_dict()
    rejected = data["rejected"]
    assert isinstance(rejected, list)
    data["rejected_total"] = len(rejected)
    data["rejected"] = rejected[:MAX_REJECTIONS_LISTED]
    data["caption_source"] = upload.caption_source
    return _Built(
        report=data,
        image_count=report.accepted,
        caption_count=report.caption_count,
        archive=out_path if report.accepted else None,
    )


def _judge_image(
    member: _Member, settings: Settings, limits: ArchiveLimits, builder: ReportBuilder
) -> tuple[bytes, Any] | None:
    """(bytes, ImageInfo) of a usable image, or None with the reason recorded."""
    try:
        data = member.read()
        if looks_like_archive(data[:512]):
            raise MemberRejectedError("nested_archive", "archives inside the upload are not opened")
        decoded = decode_image(data, max_pixels=settings.image_max_pixels, max_bytes=limits.max_member_bytes)
    except MemberRejectedError as exc:
        builder.reject(member.name, exc.code, exc.detail)
        return None
    except ImageRejectedError as exc:
        builder.reject(member.name, exc.code, exc.detail)
        return None
    builder.notes.extend((member.name, note) for note in decoded.notes)
    return data, decoded.info


# -- use cases --------------------------------------------------------------------------------------


def dataset_to_schema(dataset: Dataset) -> DatasetSchema:
    """The API view of a dataset."""
    return DatasetSchema.model_validate(
        {
            "id": dataset.id,
            "name": dataset.name,
            "status": dataset.status,
            "image_count": dataset.image_count,
            "caption_count": dataset.caption_count,
            "bytes": dataset.bytes,
            "sha256": dataset.sha256,
            "end_user_id": dataset.end_user_id,
            "created_at": dataset.created_at,
            "report": dataset.report,
        }
    )


def create_dataset(
    session: Session, store: ObjectStore, settings: Settings, tenant_id: str, upload: DatasetUpload
) -> DatasetSchema:
    """Validate the upload, store what is usable and record the dataset; commits.

    Raises 422 ``dataset_invalid`` (after recording the invalid dataset) when no image is usable.
    """
    dataset_id = new_id(Prefix.DATASET)
    prefix = tenant_prefix(tenant_id, "datasets", dataset_id)
    workdir = Path(tempfile.mkdtemp(prefix="hf-dataset-", dir=settings.upload_tmp_dir))
    try:
        built = _build(upload, settings, workdir)
        dataset = Dataset(
            id=dataset_id,
            tenant_id=tenant_id,
            end_user_id=upload.end_user_id,
            name=upload.name,
            image_count=built.image_count,
            caption_count=built.caption_count,
            storage_prefix=prefix,
            report=built.report,
        )
        if built.archive is None:
            dataset.status, dataset.bytes, dataset.sha256 = DatasetStatus.INVALID.value, 0, None
            DatasetRepository(session).add(dataset)
            session.commit()
            raise ValidationProblem(
                "the upload holds no usable image; see report.rejected",
                code="dataset_invalid",
                extra={"dataset_id": dataset_id, "report": built.report},
            )
        stored = store.put_file(
            tenant_key(tenant_id, "datasets", dataset_id, ARCHIVE_NAME),
            built.archive,
            content_type="application/zip",
        )
        dataset.status, dataset.bytes, dataset.sha256 = DatasetStatus.READY.value, stored.bytes, stored.sha256
        try:
            DatasetRepository(session).add(dataset)
            session.commit()
        except BaseException:
            _delete_quietly(store, prefix)
            raise
        return dataset_to_schema(dataset)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _delete_quietly(store: ObjectStore, prefix: str) -> None:
    """Remove stored objects after a failed commit; a failure here is logged, the first error raised."""
    try:
        store.delete_prefix(prefix)
    except StorageError:
        logger.exception("could not remove %s after a failed dataset create", prefix)


def _get(session: Session, tenant_id: str, dataset_id: str, *, for_update: bool = False) -> Dataset:
    dataset = (
        DatasetRepository(session).get_for_tenant(tenant_id, dataset_id, for_update=for_update)
        if is_valid_id(dataset_id, Prefix.DATASET)
        else None
    )
    if dataset is None:
        raise NotFoundProblem(f"no dataset {dataset_id}", code="dataset_not_found")
    return dataset


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> DatasetSchema:
    """The tenant's dataset; 404 for unknown ids and other tenants' datasets alike."""
    return dataset_to_schema(_get(session, tenant_id, dataset_id))


def list_datasets(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    after: str | None,
    end_user_id: str | None = None,
    status: str | None = None,
) -> DatasetList:
    """One page of the tenant's datasets, newest first."""
    page = DatasetRepository(session).list_page(
        tenant_id,
        limit=limit,
        after=decode_cursor(after, Prefix.DATASET),
        end_user_id=end_user_id,
        status=status,
    )
    return DatasetList(
        data=[dataset_to_schema(d) for d in page.items],
        has_more=page.has_more,
        next_cursor=encode_cursor(page.next_after),
    )


def delete_dataset(session: Session, store: ObjectStore, tenant_id: str, dataset_id: str) -> None:
    """Delete a dataset and its stored files; 409 ``dataset_in_use`` while a live job uses it."""
    # The row lock makes a concurrent job create (which locks the dataset too) wait or see it deleted.
    dataset = _get(session, tenant_id, dataset_id, for_update=True)
    if JobRepository(session).has_live_job_for_dataset(dataset.id):
        raise ConflictProblem("a queued, running or cancelling job uses this dataset", code="dataset_in_use")
    DatasetRepository(session).mark_deleted(dataset)
    session.commit()
    # After the commit: a storage failure leaves orphaned bytes (found by prefix), never a dataset
    # row whose files are gone.
    _delete_quietly(store, dataset.storage_prefix)
