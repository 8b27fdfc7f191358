"""Nothing is lost when a worker is killed, when Redis forgets its queue, or when Postgres goes away.

Each test drives real worker processes; waits poll the database, the API or S3 with deadlines.
"""

from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import boto3
import pytest
import redis

from core.hypernetwork.fileformat import load_pt
from tests.worker.conftest import LEASE_SECONDS, Stack, wait_for
from tests.worker.proxy import TcpProxy
from worker.celery_app import make_celery
from worker.maintenance import publish_run
from worker.reconciler import reconcile_expired_leases

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _checkpoint_steps(stack: Stack, job_id: str) -> list[int]:
    return sorted(int(a.step) for a in stack.artifacts(job_id, kind="checkpoint") if a.step is not None)


def _loss_steps(stack: Stack, job_id: str, tmp_path: Path) -> list[int]:
    with stack.client() as client:
        [log] = [a for a in client.artifacts(job_id) if a["kind"] == "loss_log"]
        path = client.download_artifact(log, tmp_path)
    return [int(row["step"]) for row in csv.DictReader(io.StringIO(path.read_text()))]


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(stack: Stack, tmp_path: Path) -> None:
    """The killed worker's lease expires, the job resumes on a new worker and ends with one release."""
    first = stack.start_worker()
    job_id = stack.submit(stack.spec(steps=300, save_every=25, name="crashy"))
    wait_for(lambda: _checkpoint_steps(stack, job_id), timeout=180, what="a first uploaded checkpoint")
    stack.kill_worker(first)  # SIGKILL to the whole group: parent, pool child, maintenance
    killed_at = _checkpoint_steps(stack, job_id)[-1]
    assert stack.job(job_id).status == "running"  # nobody released it: only the lease can tell

    stack.start_worker()
    job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=240)
    assert job.status == "succeeded", job.error_message
    assert job.attempt == 2
    assert job.resumed_from_step is not None and job.resumed_from_step >= killed_at
    assert job.resumed_from_step % 25 == 0
    types = [e.type for e in stack.events(job_id)]
    assert types.count("job.resumed") == 1 and types.count("job.succeeded") == 1
    resumed = next(e for e in stack.events(job_id) if e.type == "job.resumed")
    assert resumed.data["resumed_from_step"] == job.resumed_from_step
    assert len(stack.artifacts(job_id, kind="hypernetwork")) == 1
    with stack.client() as client:
        [release] = [a for a in client.artifacts(job_id) if a["kind"] == "hypernetwork"]
        assert load_pt(client.download_artifact(release, tmp_path)).step == 300
    # The resumed run kept the loss rows up to its checkpoint and redid the rest: every step once.
    assert _loss_steps(stack, job_id, tmp_path) == list(range(1, 301))
    stack.stop_workers()


def test_redis_flushed_while_jobs_are_queued_the_reconciler_re_enqueues_them(stack: Stack) -> None:
    """FLUSHDB drops every queued message; the reconciler notices and the jobs still run, once each."""
    stack.start_worker()
    blocker = stack.submit(stack.spec(steps=5000, save_every=0, name="blocker"))
    stack.wait_step(blocker, 1, timeout=180)
    waiting = [stack.submit(stack.spec(steps=3, save_every=0, name=f"queued-{i}")) for i in range(2)]
    broker = redis.Redis.from_url(stack.redis_url)
    wait_for(lambda: broker.llen("training") >= 2, timeout=30, what="the queued messages to reach Redis")
    broker.flushdb()
    assert broker.llen("training") == 0
    with stack.client() as client:
        client.cancel_job(blocker)
    stack.wait_status(blocker, {"cancelled"}, timeout=60)
    for job_id in waiting:
        job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=180)
        assert job.status == "succeeded" and job.attempt == 1
        assert [e.type for e in stack.events(job_id)].count("job.started") == 1
    stack.stop_workers()


def _proxied(url: str, port: int) -> str:
    parsed = urlparse(url)
    netloc = parsed.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunparse(parsed._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def _state_steps(stack: Stack, job_id: str) -> list[int]:
    """Checkpoint steps whose resume state reached S3 (visible while the database is cut off)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["HYPERFORGE_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    prefix = f"tenants/{stack.tenant_id}/jobs/{job_id}/resume/"
    listed = s3.list_objects_v2(Bucket=stack.env["HYPERFORGE_S3_BUCKET"], Prefix=prefix)
    keys = [o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])]
    return sorted(int(k.split("-")[1].split(".")[0]) for k in keys if k.endswith(".pt.state"))


@pytest.fixture()
def cut_off_worker(stack: Stack):
    """A worker that reaches Postgres only through a proxy the test can cut (no reconciler of its own)."""
    parsed = urlparse(stack.database_url.replace("+psycopg", ""))
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    proc = stack.start_worker(
        {"HYPERFORGE_DATABASE_URL": _proxied(stack.database_url, proxy.port)}, ("--no-reconcile",)
    )
    try:
        yield proxy, proc
    finally:
        proxy.restore()
        stack.stop_workers()
        proxy.close()


def test_postgres_outage_training_continues_and_progress_catches_up(stack: Stack, cut_off_worker) -> None:
    """While the database is unreachable the loop trains on (checkpoints reach S3); afterwards the job
    row catches up and the job succeeds on its first attempt."""
    proxy, _ = cut_off_worker
    job_id = stack.submit(stack.spec(steps=300, save_every=25, name="outage"))
    stack.wait_step(job_id, 3, timeout=180)
    proxy.cut()
    at_cut = int(stack.job(job_id).progress["step"])
    # Training goes on without the database: newer checkpoints keep arriving in S3.
    wait_for(
        lambda: [s for s in _state_steps(stack, job_id) if s >= at_cut + 20],
        timeout=120,
        what="checkpoints written during the outage",
    )
    assert int(stack.job(job_id).progress["step"]) == at_cut  # nothing reached the database
    proxy.restore()
    stack.wait_step(job_id, at_cut + 20, timeout=60)  # the progress catches up
    job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=240)
    assert job.status == "succeeded" and job.attempt == 1
    assert len(stack.artifacts(job_id, kind="hypernetwork")) == 1


def test_postgres_outage_past_the_lease_nothing_is_finalised_without_it(stack: Stack, cut_off_worker) -> None:
    """The lease expires while the worker is cut off and the job is re-queued: the old run writes
    nothing more; the re-run (attempt 2) resumes and is the only one that finalises."""
    proxy, _ = cut_off_worker
    job_id = stack.submit(stack.spec(steps=300, save_every=25, name="fenced"))
    wait_for(lambda: _checkpoint_steps(stack, job_id), timeout=180, what="a first uploaded checkpoint")
    proxy.cut()
    # The reconciler (here: the test's, on the direct connection) re-queues once the lease ran out.
    wait_for(
        lambda: job_id in reconcile_expired_leases(stack.db).requeued,
        timeout=LEASE_SECONDS * 4,
        what="the lease to expire and the job to be re-queued",
    )
    requeued = stack.job(job_id)
    assert requeued.status == "queued" and requeued.attempt == 1
    publish_run(make_celery(stack.redis_url), job_id)
    proxy.restore()
    job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=240)
    assert job.status == "succeeded", job.error_message
    assert job.attempt == 2 and job.resumed_from_step is not None
    events = stack.events(job_id)
    types = [e.type for e in events]
    assert types.count("job.succeeded") == 1 and types.count("job.resumed") == 1
    # Between the re-queue and the re-run's start, the fenced-out first run wrote nothing.
    queued_at = next(i for i, e in enumerate(events) if e.type == "job.queued" and e.data.get("reason"))
    resumed_at = types.index("job.resumed")
    assert types[queued_at + 1 : resumed_at] == []
    assert len(stack.artifacts(job_id, kind="hypernetwork")) == 1


def _pool_child(worker_pid: int) -> int:
    """The Celery pool process running the job (the worker's child that is not the maintenance loop)."""
    for child in Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"worker.maintenance" not in cmdline:
            return int(child)
    raise AssertionError("no pool child")


def test_sigterm_hands_the_job_back_with_a_checkpoint_and_it_resumes(stack: Stack) -> None:
    """What Celery does on broker connection loss (SIGTERM to the running task's process): the run
    stops at its next step, saves, re-queues the job, and the next run resumes from that step."""
    proc = stack.start_worker()
    job_id = stack.submit(stack.spec(steps=300, save_every=0, name="interrupted"))
    stack.wait_step(job_id, 3, timeout=180)
    os.kill(_pool_child(proc.pid), signal.SIGTERM)
    stack.wait_event(job_id, "job.resumed", timeout=120)
    handed_back = next(e for e in stack.events(job_id) if e.data.get("reason") == "worker_interrupted")
    saved = _checkpoint_steps(stack, job_id)
    assert saved and saved[0] == handed_back.data["step"] >= 3
    job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=240)
    assert job.status == "succeeded" and job.attempt == 2
    assert job.resumed_from_step == handed_back.data["step"]
    assert len(stack.artifacts(job_id, kind="hypernetwork")) == 1
    stack.stop_workers()
