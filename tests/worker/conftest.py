"""The worker's test stack: a migrated Postgres database per module, Redis DB 5, the S3 server, the
API as a real HTTP server and real ``hyperforge worker`` processes (never eager Celery).

Every wait is a poll with a deadline on the database or the API, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse, urlunparse

import httpx
import psycopg
import pytest
import redis

from api.db.engine import Database
from api.db.migrate import upgrade
from api.db.models import Job, JobEvent
from api.db.repositories.artifacts import ArtifactRepository
from api.db.repositories.base_models import BaseModelRepository
from api.db.repositories.jobs import JobRepository
from api.db.repositories.tenants import ApiKeyRepository, TenantRepository
from api.security import generate_api_key
from api.settings import DEV_PEPPER
from core.data.demo import write_demo_dataset
from worker.client import Client

T = TypeVar("T")

REDIS_TEST_DB = 5  # the worker suite's own Redis database: FLUSHDB touches only this one
LEASE_SECONDS = 5  # the settings' minimum: heartbeats every 1.25 s, dead workers noticed in ~6 s
ROOT = Path(__file__).resolve().parents[2]
TINY_WIDTHS = [48, 32, 64]  # core.models.tiny.TINY_WIDTHS["sd1"]


def wait_for(predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # a service still starting: keep polling until the deadline
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)  # poll interval of a bounded wait, not synchronisation by sleeping
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last_error})" if last_error else "")
    )


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_db(url: str, name: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{name}"))


def _admin_conninfo(url: str) -> str:
    parsed = urlparse(url.replace("+psycopg", ""))
    return urlunparse(parsed._replace(path="/postgres"))


def _redis_db_url(url: str, db: int) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{db}"))


@dataclass
class Stack:
    """Everything a worker test talks to."""

    database_url: str
    redis_url: str
    env: dict[str, str]
    api_url: str
    api_key: str
    tenant_id: str
    model_id: str
    dataset_id: str
    db: Database
    tmp: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> Client:
        """An API client with the test tenant's key."""
        return Client(self.api_url, self.api_key)

    def start_worker(
        self, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``hyperforge worker`` (its own process group) and wait until it consumes."""
        env = {**self.env, **(extra_env or {})}
        log = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        node = f"test-{uuid.uuid4().hex[:6]}@%h"
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "worker", "--hostname", node, "--loglevel", "INFO", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        self.workers.append(proc)
        logfile = Path(log.name)
        wait_for(
            lambda: proc.poll() is None and b"ready." in logfile.read_bytes(),
            timeout=90,
            what=f"the worker to start (log {logfile})",
        )
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal a worker's whole process group (parent, pool child, maintenance) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_workers(self) -> None:
        """Stop every worker this stack started."""
        for proc in self.workers:
            if proc.poll() is None:
                self.kill_worker(proc)
        self.workers.clear()

    # -- database views ------------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        """A fresh copy of the job row."""
        with self.db.session() as session:
            job = JobRepository(session).get(job_id)
            assert job is not None
            session.expunge(job)
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        """Every event of the job, in seq order."""
        with self.db.session() as session:
            rows = JobRepository(session).events_after(job_id, 0, limit=100_000)
            for row in rows:
                session.expunge(row)
            return rows

    def artifacts(self, job_id: str, kind: str | None = None) -> list[Any]:
        """The job's artifact rows."""
        with self.db.session() as session:
            rows = ArtifactRepository(session).list_for_job(job_id, kind=kind)
            for row in rows:
                session.expunge(row)
            return rows

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 120) -> Job:
        """Wait until the job reaches one of ``statuses``."""
        return wait_for(
            lambda: (j := self.job(job_id)) and j.status in statuses and j,
            timeout=timeout,
            what=f"{job_id} to become {'/'.join(sorted(statuses))} (now {self.job(job_id).status})",
        )

    def wait_step(self, job_id: str, step: int, timeout: float = 120) -> Job:
        """Wait until the job's recorded progress reaches ``step``."""
        return wait_for(
            lambda: (j := self.job(job_id)) and int((j.progress or {}).get("step") or 0) >= step and j,
            timeout=timeout,
            what=f"{job_id} to reach step {step}",
        )

    def wait_event(self, job_id: str, type_: str, timeout: float = 120, count: int = 1) -> bool:
        """Wait until the job has ``count`` events of ``type_``."""
        return wait_for(
            lambda: (
                (found := [e for e in self.events(job_id) if e.type == type_])
                and len(found) >= count
                and found
            ),
            timeout=timeout,
            what=f"{count} {type_} event(s) of {job_id}",
        )

    def spec(self, *, steps: int, save_every: int, name: str = "inkwash", **training: Any) -> dict[str, Any]:
        """A tiny-model training spec on the module's dataset."""
        return {
            "name": name,
            "dataset_id": self.dataset_id,
            "base_model": self.model_id,
            "hypernetwork": {"layer_structure": [1, 2, 1], "enable_sizes": TINY_WIDTHS},
            "training": {
                "learn_rate": "1e-4",
                "steps": steps,
                "width": 64,
                "height": 64,
                "seed": 7,
                **training,
            },
            "checkpoints": {"save_every": save_every, "save_optimizer_state": True},
            "samples": {
                "every": 0,
                "prompts": [
                    {"prompt": "a red circle, hatchwork style", "steps": 2, "width": 64, "height": 64}
                ],
                "strengths": [0.0, 1.0],
            },
        }

    def submit(self, spec: dict[str, Any]) -> str:
        """Submit a job through the API; returns its id."""
        with self.client() as client:
            return str(client.submit_job(spec)["id"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1 diffusers folder the worker trains on."""
    from core.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd1", arch="sd1")


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    database_url: str,
    redis_url: str,
    s3_endpoint: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A fresh database, Redis DB and bucket for the module, the API on a free port; workers on demand."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    db_name = f"hf_worker_{module}"[:60]
    with psycopg.connect(_admin_conninfo(database_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    url = _with_db(database_url, db_name)
    upgrade(url)
    broker = _redis_db_url(redis_url, REDIS_TEST_DB)
    redis.Redis.from_url(broker).flushdb()
    tmp = tmp_path_factory.mktemp(f"worker-{module}")
    port = free_port()
    env = {
        **os.environ,
        "HYPERFORGE_ENVIRONMENT": "local",
        "HYPERFORGE_DATA_DIR": str(tmp / "data"),
        "HYPERFORGE_DATABASE_URL": url,
        "HYPERFORGE_BROKER_URL": broker,
        "HYPERFORGE_STORAGE_BACKEND": "s3",
        "HYPERFORGE_S3_ENDPOINT_URL": s3_endpoint,
        "HYPERFORGE_S3_BUCKET": f"hf-worker-{module.replace('_', '-')}"[:60],
        "HYPERFORGE_S3_ACCESS_KEY_ID": "testing",
        "HYPERFORGE_S3_SECRET_ACCESS_KEY": "testing",
        "HYPERFORGE_S3_FORCE_PATH_STYLE": "true",
        "HYPERFORGE_S3_CREATE_BUCKET": "true",
        "HYPERFORGE_LEASE_SECONDS": str(LEASE_SECONDS),
        "HYPERFORGE_LOG_JSON": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    db = Database.from_url(url, pool_size=2, max_overflow=2)
    with db.session() as session:
        model = BaseModelRepository(session).add(
            name="tiny", arch="sd1", format="diffusers", uri=str(tiny_model_dir), sha256_short=None
        )
        tenant = TenantRepository(session).add("worker-tests")
        key = generate_api_key(DEV_PEPPER)
        ApiKeyRepository(session).add(tenant.id, key.prefix, key.key_hash)
        model_id, tenant_id = model.id, tenant.id
        session.commit()
    api_log = (tmp / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    api_url = f"http://127.0.0.1:{port}"
    st: Stack | None = None
    try:
        wait_for(
            lambda: api.poll() is None and httpx.get(f"{api_url}/healthz", timeout=2).status_code == 200,
            timeout=60,
            what=f"the API to start (log {api_log.name})",
        )
        images = write_demo_dataset(tmp / "demo", count=4, seed=0, size=64)
        with Client(api_url, key.secret) as client:
            dataset = client.upload_dataset([*images, *(p.with_suffix(".txt") for p in images)], name="demo")
        st = Stack(url, broker, env, api_url, key.secret, tenant_id, model_id, dataset["id"], db, tmp)
        yield st
    finally:
        if st is not None:
            st.stop_workers()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(api.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            api.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(api.pid, signal.SIGKILL)
        db.dispose()
        with psycopg.connect(_admin_conninfo(database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def worker(stack: Stack) -> subprocess.Popen[bytes]:
    """One running worker for the module."""
    return stack.start_worker()
