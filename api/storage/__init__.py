"""Object storage: the ``ObjectStore`` protocol, an S3 backend and a filesystem backend.

``build_store(settings)`` picks the backend the settings name. Keys are tenant-namespaced
(``tenant_key``) and validated by every backend.
"""

from __future__ import annotations

from api.settings import Settings
from api.storage.base import (
    InvalidKeyError,
    ObjectMeta,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    StoredObject,
    check_key,
    content_disposition,
    tenant_key,
    tenant_prefix,
)
from api.storage.filesystem import FilesystemObjectStore
from api.storage.ranges import ByteRange, UnsatisfiableRangeError, parse_range
from api.storage.s3 import S3ObjectStore

__all__ = [
    "ByteRange",
    "FilesystemObjectStore",
    "InvalidKeyError",
    "ObjectMeta",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3ObjectStore",
    "StorageError",
    "StoredObject",
    "UnsatisfiableRangeError",
    "build_store",
    "check_key",
    "content_disposition",
    "parse_range",
    "tenant_key",
    "tenant_prefix",
]


def build_store(settings: Settings) -> ObjectStore:
    """The object store the settings describe (S3, or a folder in local mode)."""
    if settings.storage_backend == "s3":
        secret = settings.s3_secret_access_key
        store = S3ObjectStore(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            force_path_style=settings.s3_force_path_style,
            chunk_bytes=settings.s3_multipart_chunk_bytes,
            presign_seconds=settings.presigned_url_seconds,
        )
        if settings.s3_create_bucket:
            store.ensure_bucket()
        return store
    return FilesystemObjectStore(settings.effective_storage_dir)
