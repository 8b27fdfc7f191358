"""End to end through the real API, Redis, Postgres, S3 and a real worker process.

Upload, submit, stream events over SSE, succeed, download the release ``.pt`` and load it with
core; a failing job reports a stable error code; cancellation while queued and while running;
the same job delivered twice runs once.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api.db.repositories.base_models import BaseModelRepository
from core.hypernetwork.fileformat import load_pt
from tests.worker.conftest import Stack
from worker.celery_app import make_celery
from worker.maintenance import publish_run

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_submit_stream_succeed_download_and_load(
    stack: Stack, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """A job streams queued -> started -> progress -> checkpoint -> succeeded; its .pt loads in core."""
    spec = stack.spec(steps=12, save_every=6)
    with stack.client() as client:
        job = client.submit_job(spec, idempotency_key="e2e-1")
        events = list(client.stream_events(job["id"], timeout=240))
        final = client.get_job(job["id"])
        artifacts = client.artifacts(job["id"])
        [release] = [a for a in artifacts if a["kind"] == "hypernetwork"]
        path = client.download_artifact(release, tmp_path)

    types = [e["type"] for e in events]
    assert types[0] == "job.queued" and types[-1] == "job.succeeded", types
    assert "job.started" in types and "job.progress" in types and "job.checkpoint" in types
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert final["status"] == "succeeded" and final["attempt"] == 1 and final["error"] is None
    assert final["progress"]["step"] == 12 and final["progress"]["total_steps"] == 12
    kinds = sorted(a["kind"] for a in artifacts)
    for kind in ("hypernetwork_safetensors", "loss_log", "loss_plot", "training_config", "comparison_grid"):
        assert kind in kinds, kinds
    assert kinds.count("hypernetwork") == 1
    assert sorted(a["step"] for a in artifacts if a["kind"] == "checkpoint") == [6, 12]
    hn = load_pt(path)
    assert hn.step == 12 and hn.name == "inkwash"
    # Progress is throttled: at most about one database write (and job.progress event) per second.
    rows = stack.events(job["id"])
    progress = [e for e in rows if e.type == "job.progress"]
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in itertools.pairwise(progress)]
    assert progress and all(g >= 0.8 for g in gaps), gaps
    seconds = (rows[-1].created_at - rows[0].created_at).total_seconds()
    assert len(progress) <= seconds + 2


def test_a_failing_job_reports_a_stable_error_code(
    stack: Stack, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """A base model whose files went missing fails the job with ``model_load_failed``, not a crash."""
    with stack.db.session() as session:
        source = BaseModelRepository(session).get(stack.model_id)
        assert source is not None
        broken = tmp_path / "broken-model"
        shutil.copytree(source.uri, broken)
        shutil.rmtree(broken / "unet")
        model = BaseModelRepository(session).add(
            name="broken", arch="sd1", format="diffusers", uri=str(broken), sha256_short=None
        )
        model_id = model.id
        session.commit()
    spec = {**stack.spec(steps=4, save_every=0), "base_model": model_id}
    job_id = stack.submit(spec)
    job = stack.wait_status(job_id, {"failed", "succeeded"}, timeout=180)
    assert job.status == "failed"
    assert job.error_code == "model_load_failed", (job.error_code, job.error_message)
    with stack.client() as client:
        shown = client.get_job(job_id)
    assert shown["error"]["code"] == "model_load_failed" and shown["error"]["message"]
    failed = [e for e in stack.events(job_id) if e.type == "job.failed"]
    assert len(failed) == 1 and failed[0].data["error"]["code"] == "model_load_failed"


def test_cancel_while_queued_and_while_running(stack: Stack, worker: subprocess.Popen[bytes]) -> None:
    """Queued: cancelled at once and never started. Running: stops within seconds, keeping a checkpoint."""
    running = stack.submit(stack.spec(steps=2000, save_every=0, name="long"))
    stack.wait_step(running, 2, timeout=180)
    queued = stack.submit(stack.spec(steps=4, save_every=0, name="waiting"))
    with stack.client() as client:
        assert client.cancel_job(queued)["status"] == "cancelled"
        assert client.cancel_job(running, save_checkpoint=True)["status"] in ("cancelling", "cancelled")
    job = stack.wait_status(running, {"cancelled"}, timeout=60)
    stopped_at = int(job.progress["step"])
    assert stopped_at < 2000
    types = [e.type for e in stack.events(running)]
    assert types[-1] == "job.cancelled" and "job.succeeded" not in types
    saved = stack.artifacts(running, kind="checkpoint")
    assert len(saved) == 1 and saved[0].step is not None and saved[0].step >= 2
    assert stack.artifacts(running, kind="hypernetwork") == []
    # The queued job's message still reaches the worker; its claim finds it cancelled and skips it.
    stack.wait_event(queued, "job.cancelled")
    probe = stack.submit(stack.spec(steps=2, save_every=0, name="after"))
    stack.wait_status(probe, {"succeeded"}, timeout=180)
    assert "job.started" not in [e.type for e in stack.events(queued)]
    assert stack.job(queued).attempt == 0


def test_the_same_job_delivered_twice_runs_once(stack: Stack, worker: subprocess.Popen[bytes]) -> None:
    """Two workers get the same job at once (plus the outbox's message): one claim wins, one run."""
    second = stack.start_worker()
    try:
        job_id = stack.submit(stack.spec(steps=6, save_every=0, name="twice"))
        app = make_celery(stack.redis_url)
        publish_run(app, job_id)
        publish_run(app, job_id)
        stack.wait_status(job_id, {"succeeded"}, timeout=240)
    finally:
        stack.kill_worker(second)
    events = stack.events(job_id)
    assert [e.type for e in events].count("job.started") == 1
    assert [e.type for e in events].count("job.succeeded") == 1
    assert stack.job(job_id).attempt == 1
    assert len(stack.artifacts(job_id, kind="hypernetwork")) == 1


def test_jobs_cli_submit_watch_status_download(
    stack: Stack, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """``hyperforge jobs submit --watch``, ``status`` and ``download`` drive the same API."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(stack.spec(steps=4, save_every=0, name="cli")))
    base = [sys.executable, "-m", "core.cli", "jobs"]
    auth = ["--url", stack.api_url, "--api-key", stack.api_key]
    submitted = subprocess.run(
        [*base, "submit", str(spec_file), "--watch", *auth], capture_output=True, text=True, timeout=300
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout[: submitted.stdout.rindex("}") + 1])["id"]
    status = subprocess.run([*base, "status", job_id, *auth], capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["status"] == "succeeded"
    out = tmp_path / "download"
    got = subprocess.run(
        [*base, "download", job_id, "--kind", "hypernetwork", "--out", str(out), *auth],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert load_pt(out / "cli.pt").step == 4
