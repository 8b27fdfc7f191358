"""The object stores: streamed multipart uploads, ranges, presigned URLs, key rules (S3 and filesystem)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import httpx
import pytest

from api.storage import (
    FilesystemObjectStore,
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    S3ObjectStore,
    UnsatisfiableRangeError,
    check_key,
    parse_range,
    tenant_key,
    tenant_prefix,
)

TENANT = "ten_01m8afaqaspy01bgrd7atg3xbh"


@pytest.fixture(params=["s3", "filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        s3: S3ObjectStore = request.getfixturevalue("s3_store")
        return s3
    return FilesystemObjectStore(tmp_path / "objects")


class _Trickle(io.RawIOBase):
    """A non-seekable stream that returns short reads (like a socket)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_streamed_upload_in_parts_round_trips(store: ObjectStore) -> None:
    data = os.urandom(11 * 1024 * 1024 + 123)  # three 5 MiB parts on S3
    key = tenant_key(TENANT, "datasets", "ds_x", "dataset.zip")
    stored = store.put_stream(key, _Trickle(data, 700_000), content_type="application/zip")  # type: ignore[arg-type]
    assert stored.bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    meta = store.head(key)
    assert meta is not None and meta.bytes == len(data) and meta.content_type == "application/zip"
    assert b"".join(store.iter_bytes(key)) == data
    assert b"".join(store.iter_bytes(key, start=10, end=19)) == data[10:20]
    assert b"".join(store.iter_bytes(key, start=len(data) - 5)) == data[-5:]
    prefix = tenant_prefix(TENANT, "datasets", "ds_x")
    assert list(store.list_keys(prefix)) == [key]
    assert store.delete_prefix(prefix) == 1
    assert store.head(key) is None
    with pytest.raises(ObjectNotFoundError):
        b"".join(store.iter_bytes(key))


def test_empty_objects_read_back_empty(store: ObjectStore) -> None:
    key = tenant_key(TENANT, "jobs", "job_x", "empty.txt")
    assert store.put_bytes(key, b"").bytes == 0
    assert b"".join(store.iter_bytes(key)) == b""


def test_download_to_a_file(store: ObjectStore, tmp_path: Path) -> None:
    key = tenant_key(TENANT, "jobs", "job_x", "a.bin")
    store.put_bytes(key, b"hello")
    target = tmp_path / "a.bin"
    store.download_to(key, target)
    assert target.read_bytes() == b"hello"


def test_presigned_url_serves_the_object(s3_store: S3ObjectStore) -> None:
    key = tenant_key(TENANT, "jobs", "job_x", "inkwash.pt")
    s3_store.put_bytes(key, b"weights")
    url = s3_store.presigned_get_url(key, filename="水墨.pt", content_type="application/octet-stream")
    assert url is not None and "X-Amz-Expires=300" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"weights"
    assert "filename*=UTF-8''%E6%B0%B4%E5%A2%A8.pt" in r.headers["content-disposition"]


def test_filesystem_store_has_no_presigned_urls(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path)
    assert store.presigned_get_url(tenant_key(TENANT, "a")) is None


@pytest.mark.parametrize(
    "key",
    [
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh/../x",
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh/./x",
        "tenants/../etc/passwd",
        "/etc/passwd",
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh",
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh/a//b",
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh/a\\b",
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh/.hidden",
        "tenants/ten_01m8afaqaspy01bgrd7atg3xbh/\u732b.png",
        "models/x",
        "tenants/not-a-tenant/x",
    ],
)
def test_bad_keys_are_refused_by_every_backend(key: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyError):
        check_key(key)
    with pytest.raises(InvalidKeyError):
        FilesystemObjectStore(tmp_path).put_bytes(key, b"x")
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-500", 100, (50, 99)),
        ("bytes=5-1", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    got = parse_range(header, size)
    assert (None if got is None else (got.start, got.end)) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(UnsatisfiableRangeError):
        parse_range(header, size)
