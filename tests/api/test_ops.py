"""/healthz, /readyz and /metrics."""

from __future__ import annotations

from pathlib import Path

from api.app import create_app
from api.storage import FilesystemObjectStore
from tests.api.conftest import ApiEnv
from tests.api.factories import png, upload


def test_healthz(any_env: ApiEnv) -> None:
    r = any_env.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_checks_database_broker_and_storage(api_env: ApiEnv) -> None:
    r = api_env.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_readyz_skips_a_non_redis_broker(local_env: ApiEnv) -> None:
    r = local_env.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "skipped", "storage": "ok"}


def test_readyz_is_503_when_something_is_down(local_env: ApiEnv, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    settings = local_env.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(settings, database=local_env.database, store=FilesystemObjectStore(blocker))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error")
    assert body["checks"]["storage"].startswith("error")


def test_metrics_count_requests_and_read_jobs(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    upload(any_env.client, tenant.headers, files=[("a.png", png())])
    any_env.client.get("/v1/datasets/ds_missing", headers=tenant.headers)
    r = any_env.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'hyperforge_http_requests_total{method="POST",route="/v1/datasets",status="201"} 1.0' in text
    assert (
        'hyperforge_http_requests_total{method="GET",route="/v1/datasets/{dataset_id}",status="404"} 1.0'
        in text
    )
    assert 'hyperforge_jobs{status="queued"} 0.0' in text
    assert "hyperforge_outbox_pending 0.0" in text
    assert "hyperforge_job_duration_seconds_count 0.0" in text
    if any_env.mode == "postgres":
        assert 'hyperforge_queue_depth{queue="training"}' in text
