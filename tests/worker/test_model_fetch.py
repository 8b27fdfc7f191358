"""Base models registered by S3 URI: fetched into the worker's disk cache once, LRU-evicted, loadable;
and the job's ``resolved_spec`` is the spec core really trains (widths from the real model).

The S3 server is real (moto on loopback); the fetch is the worker's own ``cached_base_model``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from botocore.config import Config

from api.db.engine import Database
from api.db.repositories.base_models import BaseModelRepository
from api.settings import Settings
from api.storage import build_store
from core.errors import HyperforgeError
from core.models import load_base_model
from core.models.hashing import file_sha256
from core.models.tiny import make_tiny_model
from core.training.run import CONFIG_NAME
from tests.worker.conftest import TINY_WIDTHS, Stack
from worker.cache import DiskCache
from worker.runner import MODEL_HASH_MISMATCH, MODEL_NOT_FOUND, JobRun, cached_base_model

BUCKET = "hf-model-fetch"
SINGLE = "models/tiny.safetensors"
FOLDER = "models/tiny/"


def _settings(s3_endpoint: str, data_dir: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",  # type: ignore[arg-type]
        s3_force_path_style=True,
        **extra,  # type: ignore[arg-type]
    )


def _s3(s3_endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def _upload_folder(client: Any, folder: Path, prefix: str) -> None:
    """Upload the diffusers folder (not the single file beside it) under ``prefix``."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path != folder / "model.safetensors":
            client.upload_file(str(path), BUCKET, prefix + path.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1 diffusers folder holding ``model.safetensors`` too (seed 0)."""
    return make_tiny_model(tmp_path_factory.mktemp("fetch") / "tiny", arch="sd1", single_file=True)


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, tiny_single: Path) -> Any:
    """The operator's model bucket: the single file at ``SINGLE``, the folder under ``FOLDER``."""
    client = _s3(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(tiny_single / "model.safetensors"), BUCKET, SINGLE)
    _upload_folder(client, tiny_single, FOLDER)
    return client


def _unet_equal(a: Any, b: Any) -> bool:
    """Same parameter names and values."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _age(cache: DiskCache, path: Path, seconds_ago: float) -> None:
    """Make the cache entry holding ``path`` look last used ``seconds_ago`` (the cache's recency)."""
    entry = next(e for e in cache.entries() if path.is_relative_to(e.path))
    t = time.time() - seconds_ago
    os.utime(entry.path / ".complete", (t, t))


def test_single_file_is_fetched_once_and_loads(
    bucket: Any, s3_endpoint: str, tiny_single: Path, tmp_path: Path
) -> None:
    """An ``s3://bucket/key`` checkpoint is downloaded once; the second use reads the cache."""
    key = f"models/{uuid.uuid4().hex}.safetensors"  # its own object: this test deletes it
    bucket.upload_file(str(tiny_single / "model.safetensors"), BUCKET, key)
    uri = f"s3://{BUCKET}/{key}"
    settings = _settings(s3_endpoint, tmp_path)
    cache = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    with cached_base_model(cache, uri, None, settings) as path:
        assert path.is_file() and path.suffix == ".safetensors"
        assert path.read_bytes() == (tiny_single / "model.safetensors").read_bytes()
        first = path.stat()
        model = load_base_model(path)
    original = load_base_model(tiny_single / "model.safetensors")
    assert model.arch == "sd1"
    assert model.sha256_short == original.sha256_short
    assert _unet_equal(model.unet, original.unet)

    # Gone from S3: a second download would fail, so a second use that works came from the cache.
    bucket.delete_object(Bucket=BUCKET, Key=key)
    with cached_base_model(cache, uri, None, settings) as again:
        assert again == path
        second = again.stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert len(cache.entries()) == 1


def test_folder_prefix_is_fetched_and_loads(
    bucket: Any, s3_endpoint: str, tiny_single: Path, tmp_path: Path
) -> None:
    """An ``s3://bucket/prefix/`` diffusers folder arrives whole and loads with the same weights."""
    settings = _settings(s3_endpoint, tmp_path)
    cache = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    with cached_base_model(cache, f"s3://{BUCKET}/{FOLDER}", None, settings) as path:
        assert path.is_dir() and (path / "unet" / "config.json").is_file()
        model = load_base_model(path)
    assert model.arch == "sd1"
    assert _unet_equal(model.unet, load_base_model(tiny_single).unet)


@pytest.mark.parametrize("key", ["models/missing.safetensors", "models/missing/"])
def test_a_missing_model_fails_with_a_stable_code(
    bucket: Any, s3_endpoint: str, tmp_path: Path, key: str
) -> None:
    """A key or prefix that is not there is ``model_not_found`` and leaves nothing in the cache."""
    cache = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    with (
        pytest.raises(HyperforgeError, match=r"not found|nothing under") as caught,
        cached_base_model(cache, f"s3://{BUCKET}/{key}", None, _settings(s3_endpoint, tmp_path)),
    ):
        pass
    assert caught.value.code == MODEL_NOT_FOUND
    assert cache.entries() == []
    assert [p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")] == []


def test_a_registered_hash_is_checked(
    bucket: Any, s3_endpoint: str, tiny_single: Path, tmp_path: Path
) -> None:
    """With the registered sha256 the download must match it; a wrong one is not cached."""
    settings = _settings(s3_endpoint, tmp_path)
    cache = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    uri = f"s3://{BUCKET}/{SINGLE}"
    right = file_sha256(tiny_single / "model.safetensors")[:10]
    with cached_base_model(cache, uri, right, settings) as path:
        assert load_base_model(path).sha256_short == right
    wrong = "0" * 10 if right != "0" * 10 else "1" * 10
    with pytest.raises(HyperforgeError) as caught, cached_base_model(cache, uri, wrong, settings):
        pass
    assert caught.value.code == MODEL_HASH_MISMATCH
    assert len(cache.entries()) == 1  # only the verified one


def test_least_recently_used_model_is_evicted(
    bucket: Any, s3_endpoint: str, tiny_single: Path, tmp_path: Path
) -> None:
    """Past the cap the model used longest ago goes; a model used again recently stays."""
    copy = "models/copy.safetensors"
    bucket.upload_file(str(tiny_single / "model.safetensors"), BUCKET, copy)
    settings = _settings(s3_endpoint, tmp_path)
    single = (tiny_single / "model.safetensors").stat().st_size
    probe = DiskCache(tmp_path / "probe", max_bytes=1 << 30)
    with cached_base_model(probe, f"s3://{BUCKET}/{FOLDER}", None, settings):
        pass
    folder = probe.total_bytes()
    # Room for any two of the three models, never for all three.
    cap = single + max(single, folder)
    cache = DiskCache(tmp_path / "cache", max_bytes=cap)
    a_uri, b_uri, c_uri = f"s3://{BUCKET}/{SINGLE}", f"s3://{BUCKET}/{FOLDER}", f"s3://{BUCKET}/{copy}"
    with cached_base_model(cache, a_uri, None, settings) as a:
        pass
    with cached_base_model(cache, b_uri, None, settings) as b:
        pass
    _age(cache, a, 60)  # A fetched first, B after it...
    _age(cache, b, 30)
    with cached_base_model(cache, a_uri, None, settings) as again:  # ...then A used again
        assert again == a
    with cached_base_model(cache, c_uri, None, settings) as c:
        assert c.exists()
    assert a.exists() and c.exists()
    assert not b.exists()
    assert len(cache.entries()) == 2
    assert cache.total_bytes() <= cap


# -- resolved_spec: what core really trains ------------------------------------------------------------
@pytest.fixture()
def s3_model_id(stack: Stack, bucket: Any, tiny_model_dir: Path) -> str:
    """The tiny folder registered by S3 URI, as ``hyperforge admin add-model`` records it."""
    prefix = f"models/{uuid.uuid4().hex}/"
    _upload_folder(bucket, tiny_model_dir, prefix)
    with stack.db.session() as session:
        model = BaseModelRepository(session).add(
            name=f"tiny-s3-{uuid.uuid4().hex[:6]}",
            arch="sd1",
            format="diffusers",
            uri=f"s3://{BUCKET}/{prefix}",
            sha256_short=None,
        )
        model_id = model.id
        session.commit()
    return model_id


def test_worker_records_core_resolved_spec(stack: Stack, s3_model_id: str, tmp_path: Path) -> None:
    """A job on an S3 model: the worker fetches it, trains, and ``resolved_spec`` gets the model's widths."""
    spec = stack.spec(steps=2, save_every=0)
    spec["base_model"] = s3_model_id
    del spec["hypernetwork"]["enable_sizes"]  # left to be resolved from the model
    job_id = stack.submit(spec)
    api_resolved = stack.job(job_id).resolved_spec or {}
    assert api_resolved["hypernetwork"]["enable_sizes"] != TINY_WIDTHS  # the arch's defaults

    env = stack.env
    settings = _settings(
        env["HYPERFORGE_S3_ENDPOINT_URL"],
        tmp_path / "worker",
        database_url=stack.database_url,
        broker_url=stack.redis_url,
        storage_backend="s3",
        s3_bucket=env["HYPERFORGE_S3_BUCKET"],
        lease_seconds=int(env["HYPERFORGE_LEASE_SECONDS"]),
    )
    # In this process, as the Celery task runs it: no broker involved, the job row is the truth.
    db = Database.from_url(stack.database_url, pool_size=3, max_overflow=2)  # the worker's own pool
    try:
        outcome = JobRun(settings, db, lambda: build_store(settings), job_id, "test-in-process").run()
    finally:
        db.dispose()
    assert outcome == "succeeded", stack.job(job_id).error_message

    job = stack.job(job_id)
    resolved = job.resolved_spec or {}
    assert resolved["hypernetwork"]["enable_sizes"] == TINY_WIDTHS
    assert resolved["base_model"] == s3_model_id
    assert resolved["training"]["steps"] == 2
    # Exactly what the run's training_config.json says it trained.
    config = next(a for a in stack.artifacts(job_id) if a.kind == "training_config")
    build_store(settings).download_to(config.storage_key, tmp_path / CONFIG_NAME)
    document = json.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert {**document["spec"], "base_model": s3_model_id} == resolved
    # The dataset and the model came through the worker's cache.
    assert len(DiskCache(settings.effective_cache_dir, settings.worker_cache_max_bytes).entries()) == 2
