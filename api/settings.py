"""Service settings, read from ``HYPERFORGE_*`` environment variables (pydantic-settings).

The defaults are local mode: SQLite and a filesystem object store under ``data_dir``, so
``hyperforge local`` needs nothing configured. Production sets ``HYPERFORGE_DATABASE_URL``
(``postgresql+psycopg://...``), ``HYPERFORGE_BROKER_URL`` (``redis://...``) and
``HYPERFORGE_STORAGE_BACKEND=s3`` with the ``HYPERFORGE_S3_*`` values. Settings are read once, by
``get_settings()`` or by whoever builds the app/worker; nothing else reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A development default, refused when environment=production.
DEV_PEPPER = "hyperforge-dev-pepper"

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Every tunable of the API and the worker, with its default."""

    model_config = SettingsConfigDict(env_prefix="HYPERFORGE_", extra="ignore", frozen=True)

    environment: Literal["local", "production"] = Field(
        "local", description="`production` refuses development secrets."
    )
    data_dir: Path = Field(
        Path("./hyperforge-data"), description="Local mode's home: SQLite file and objects."
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty means SQLite at `<data_dir>/hyperforge.db`."
    )
    database_pool_size: int = Field(10, ge=1, description="Connections kept in the SQLAlchemy pool.")
    database_max_overflow: int = Field(10, ge=0, description="Extra connections beyond the pool.")
    broker_url: str = Field(
        "",
        description="Celery broker; `redis://` ones are pinged by /readyz; empty: local mode's embedded one.",
    )

    storage_backend: Literal["filesystem", "s3"] = Field(
        "filesystem", description="Where datasets and artifacts live: `filesystem` or `s3`."
    )
    storage_dir: Path | None = Field(None, description="Filesystem store root; default `<data_dir>/objects`.")
    s3_endpoint_url: str | None = Field(None, description="For MinIO or another S3 API; None is AWS.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_bucket: str = Field("hyperforge", description="S3 bucket holding every object.")
    s3_access_key_id: str | None = Field(None, description="S3 access key; unset: boto3's credential chain.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_force_path_style: bool = Field(False, description="Path-style addressing (MinIO needs it).")
    s3_create_bucket: bool = Field(False, description="Create the bucket at start when missing (dev, tests).")
    s3_multipart_chunk_bytes: int = Field(8 * MiB, ge=5 * MiB, description="Multipart upload part size.")
    presigned_url_seconds: int = Field(300, ge=1, le=7 * 24 * 3600, description="Lifetime of download links.")

    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin routes; unset disables them."
    )
    api_key_pepper: SecretStr = Field(
        SecretStr(DEV_PEPPER), description="Server-side secret mixed into key hashes."
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a verified API key is trusted without a database read (revocation delay).",
    )

    max_request_bytes: int = Field(1 * MiB, ge=1024, description="Body limit of every route but uploads.")
    max_upload_bytes: int = Field(4 * GiB, ge=1024, description="Body limit of `POST /v1/datasets`.")
    max_upload_files: int = Field(10_000, ge=1, description="Most file parts in one multipart upload.")
    archive_max_members: int = Field(10_000, ge=1, description="Most entries in an uploaded zip.")
    archive_max_member_bytes: int = Field(
        64 * MiB, ge=1024, description="Most uncompressed bytes of one member."
    )
    archive_max_total_bytes: int = Field(
        8 * GiB, ge=1024, description="Most uncompressed bytes of a whole zip."
    )
    archive_max_ratio: int = Field(200, ge=2, description="Highest compression ratio a member may reach.")
    archive_max_depth: int = Field(16, ge=1, description="Deepest folder nesting of a member name.")
    image_max_pixels: int = Field(64 * MiB, ge=64 * 64, description="Largest image accepted (pixels).")
    upload_tmp_dir: Path | None = Field(
        None, description="Where uploads are spooled; default the system's temp."
    )

    webhook_allow_private: bool = Field(False, description="Allow webhooks to loopback/private addresses.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one webhook delivery attempt.")
    job_max_attempts: int = Field(3, ge=1, description="Runs of a job before it fails for good.")
    lease_seconds: int = Field(
        60, ge=5, description="How long a worker's claim on a job lasts unless renewed."
    )
    worker_cache_dir: Path | None = Field(
        None, description="Worker's dataset/model cache; default `<data_dir>/cache`."
    )
    worker_cache_max_bytes: int = Field(50 * GiB, ge=0, description="Size cap of the worker cache (LRU).")

    log_level: str = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="JSON log lines (one object per line).")

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        # Plain postgres URLs would pick psycopg2, which is not installed; psycopg 3 is.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _production_needs_real_secrets(self) -> Self:
        if self.environment == "production" and self.api_key_pepper.get_secret_value() == DEV_PEPPER:
            raise ValueError("HYPERFORGE_API_KEY_PEPPER must be set in production")
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite in ``data_dir``."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'hyperforge.db').as_posix()}"

    @property
    def effective_storage_dir(self) -> Path:
        """Root of the filesystem object store."""
        return self.storage_dir or self.data_dir / "objects"

    @property
    def effective_cache_dir(self) -> Path:
        """Root of the worker's local cache."""
        return self.worker_cache_dir or self.data_dir / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
