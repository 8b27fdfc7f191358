"""Settings defaults and checks; prefixed, time-ordered ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.ids import Prefix, is_valid_id, new_id
from api.settings import Settings


def test_local_defaults_need_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "STORAGE_BACKEND", "STORAGE_DIR"):
        monkeypatch.delenv(f"HYPERFORGE_{name}", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite:///{tmp_path.as_posix()}/hyperforge.db"
    assert settings.effective_storage_dir == tmp_path / "objects"
    assert settings.storage_backend == "filesystem"


def test_plain_postgres_urls_get_the_psycopg3_driver() -> None:
    assert Settings(database_url="postgres://u@h/db").database_url == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="postgresql://u@h/db").database_url == "postgresql+psycopg://u@h/db"


def test_production_refuses_the_development_pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYPERFORGE_API_KEY_PEPPER", raising=False)
    with pytest.raises(ValidationError, match="API_KEY_PEPPER"):
        Settings(environment="production")
    assert Settings(environment="production", api_key_pepper="s3cret").environment == "production"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERFORGE_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("HYPERFORGE_S3_FORCE_PATH_STYLE", "true")
    monkeypatch.setenv("HYPERFORGE_MAX_UPLOAD_BYTES", "2048")
    settings = Settings()
    assert (settings.storage_backend, settings.s3_force_path_style, settings.max_upload_bytes) == (
        "s3",
        True,
        2048,
    )


def test_ids_are_prefixed_unique_and_time_ordered() -> None:
    ids = [new_id(Prefix.DATASET, now_ms=ms) for ms in (1_000, 2_000, 3_000)]
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"ds_[0-9a-hjkmnp-tv-z]{26}", i) for i in ids)
    assert len({new_id(Prefix.JOB) for _ in range(1000)}) == 1000
    assert is_valid_id(ids[0], Prefix.DATASET)
    assert not is_valid_id(ids[0], Prefix.JOB)
    assert not is_valid_id("ds_../../etc", Prefix.DATASET)
