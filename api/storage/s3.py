"""The S3 object store (AWS, MinIO or any S3 API) on boto3.

Uploads go up in parts of ``chunk_bytes`` (multipart once a stream is larger than one part), so
memory stays at one part whatever the size; the sha256 is computed on the way. Downloads are
short-lived presigned GET URLs, or streamed ranges for the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from api.storage.base import (
    CHUNK_BYTES,
    ObjectMeta,
    ObjectNotFoundError,
    StorageError,
    StoredObject,
    check_key,
    check_prefix,
    content_disposition,
)

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3ObjectStore:
    """An ``ObjectStore`` on one S3 bucket."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        force_path_style: bool = False,
        chunk_bytes: int = 8 * 1024 * 1024,
        presign_seconds: int = 300,
    ) -> None:
        self.bucket = bucket
        self.chunk_bytes = chunk_bytes
        self.presign_seconds = presign_seconds
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if force_path_style else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (development and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in _MISSING and _error_code(exc) != "NoSuchBucket":
                raise StorageError(f"cannot reach bucket {self.bucket}: {exc}") from exc
            self.client.create_bucket(Bucket=self.bucket)

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Upload ``stream`` in parts; a stream of one part or less is a single PUT."""
        check_key(key)
        digest = hashlib.sha256()
        first = _read_full(stream, self.chunk_bytes)
        digest.update(first)
        try:
            if len(first) < self.chunk_bytes:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=first, ContentType=content_type)
                return StoredObject(key=key, bytes=len(first), sha256=digest.hexdigest())
            return self._multipart(key, stream, first, digest, content_type)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"upload of {key} failed: {exc}") from exc

    def _multipart(
        self, key: str, stream: BinaryIO, first: bytes, digest: Any, content_type: str
    ) -> StoredObject:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            chunk = first
            while chunk:
                number = len(parts) + 1
                response = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": response["ETag"], "PartNumber": number})
                total += len(chunk)
                chunk = _read_full(stream, self.chunk_bytes)
                digest.update(chunk)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # An abandoned multipart upload keeps its parts (and their cost) until aborted.
            # The original error is the one worth raising; a bucket lifecycle rule cleans up leftovers.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return StoredObject(key=key, bytes=total, sha256=digest.hexdigest())

    def put_file(
        self, key: str, path: Path, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Upload a local file."""
        with path.open("rb") as f:
            return self.put_stream(key, f, content_type=content_type)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Upload small bytes in one PUT."""
        check_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"upload of {key} failed: {exc}") from exc
        return StoredObject(key=key, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def head(self, key: str) -> ObjectMeta | None:
        """HEAD the object."""
        check_key(key)
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise StorageError(f"head of {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"head of {key} failed: {exc}") from exc
        return ObjectMeta(key=key, bytes=int(r["ContentLength"]), content_type=str(r.get("ContentType", "")))

    def iter_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream a byte range with a ranged GET."""
        check_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if (
            start > 0 or end is not None
        ):  # no Range for the whole object: S3 answers 416 to "bytes=0-" when empty
            params["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            body = self.client.get_object(**params)["Body"]
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise ObjectNotFoundError(key) from exc
            raise StorageError(f"read of {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"read of {key} failed: {exc}") from exc
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def download_to(self, key: str, path: Path) -> None:
        """Download to ``path`` via a temporary file beside it, renamed when complete."""
        tmp = path.with_name(path.name + ".part")
        with tmp.open("wb") as f:
            for chunk in self.iter_bytes(key):
                f.write(chunk)
        os.replace(tmp, path)

    def delete(self, key: str) -> None:
        """Delete one object."""
        check_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"delete of {key} failed: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix`` in batches of 1000."""
        check_prefix(prefix)
        count = 0
        batch: list[dict[str, str]] = []
        try:
            for key in self.list_keys(prefix):
                batch.append({"Key": key})
                if len(batch) == 1000:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                    count, batch = count + len(batch), []
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                count += len(batch)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"delete under {prefix} failed: {exc}") from exc
        return count

    def list_keys(self, prefix: str) -> Iterator[str]:
        """List keys under ``prefix``."""
        check_prefix(prefix)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"listing {prefix} failed: {exc}") from exc

    def presigned_get_url(
        self, key: str, *, filename: str | None = None, content_type: str | None = None
    ) -> str | None:
        """A GET URL valid for ``presign_seconds``."""
        check_key(key)
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        if content_type:
            params["ResponseContentType"] = content_type
        url: str = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.presign_seconds
        )
        return url

    def check(self) -> None:
        """HEAD the bucket."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"bucket {self.bucket} is not reachable: {exc}") from exc


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Read up to ``size`` bytes, looping over short reads (sockets, pipes)."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
