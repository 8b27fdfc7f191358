"""Dispatch latency: ``POST /v1/jobs`` to the job's ``job.started`` event, with a warm idle worker on Redis.

Starts the API (``hyperforge serve``) and one ``hyperforge worker`` against Postgres, Redis (DB 6)
and a filesystem store; registers the tiny model and uploads the demo dataset. Each sample posts a
one-step job after the worker has gone idle (the previous job finished and its pool child was
replaced), and measures from just before the POST to the ``created_at`` of ``job.started``.
Ends by printing ``{"dispatch_ms_median": ...}``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.db.engine import Database  # noqa: E402
from api.db.migrate import upgrade  # noqa: E402
from api.db.repositories.base_models import BaseModelRepository  # noqa: E402
from api.db.repositories.tenants import ApiKeyRepository, TenantRepository  # noqa: E402
from api.security import generate_api_key  # noqa: E402
from api.settings import DEV_PEPPER  # noqa: E402
from core.data.demo import write_demo_dataset  # noqa: E402
from core.models.tiny import make_tiny_model  # noqa: E402
from worker.client import Client  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_SAMPLES", "15"))
DATABASE_URL = os.environ.get(
    "HYPERFORGE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HYPERFORGE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
BENCH_DB = "hf_bench_dispatch"
IDLE_SETTLE_S = float(
    os.environ.get("BENCH_IDLE_S", "5")
)  # after a job ends, let the worker fork its next pool child (warm and idle)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    """Start the stack, measure ``SAMPLES`` dispatches, print the median in ms."""
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-dispatch-"))
    admin = DATABASE_URL.replace("+psycopg", "").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    url = DATABASE_URL.rsplit("/", 1)[0] + "/" + BENCH_DB
    upgrade(url)
    redis.Redis.from_url(REDIS_URL).flushdb()
    model_dir = make_tiny_model(tmp / "model")
    db = Database.from_url(url)
    with db.session() as s:
        model = BaseModelRepository(s).add(
            name="tiny", arch="sd1", format="diffusers", uri=str(model_dir), sha256_short=None
        )
        tenant = TenantRepository(s).add("bench")
        key = generate_api_key(DEV_PEPPER)
        ApiKeyRepository(s).add(tenant.id, key.prefix, key.key_hash)
        model_id = model.id
        s.commit()
    db.dispose()
    env = {
        **os.environ,
        "HYPERFORGE_DATA_DIR": str(tmp / "data"),
        "HYPERFORGE_DATABASE_URL": url,
        "HYPERFORGE_BROKER_URL": REDIS_URL,
        "HYPERFORGE_STORAGE_BACKEND": "filesystem",
        "HYPERFORGE_STORAGE_DIR": str(tmp / "objects"),
        "HYPERFORGE_LOG_JSON": "false",
        "HYPERFORGE_LOG_LEVEL": "WARNING",
    }
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}"
    logs = (tmp / "api.log").open("wb"), (tmp / "worker.log").open("wb")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "core.cli", "serve", "--port", str(port)],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "core.cli", "worker", "--loglevel", "INFO"],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        ),
    ]  # fmt: skip
    latencies: list[float] = []
    try:
        _wait(lambda: httpx.get(f"{api_url}/healthz").status_code == 200, 60, "the API")
        _wait(lambda: b"ready." in Path(logs[1].name).read_bytes(), 120, "the worker")
        images = write_demo_dataset(tmp / "demo", count=4, size=64)
        with Client(api_url, key.secret) as client:
            dataset = client.upload_dataset([*images, *(p.with_suffix(".txt") for p in images)])
            spec = {
                "dataset_id": dataset["id"],
                "base_model": model_id,
                "hypernetwork": {"enable_sizes": [48, 32, 64]},
                "training": {"steps": 1, "width": 64, "height": 64, "seed": 1},
                "checkpoints": {"save_every": 0, "save_optimizer_state": False},
                "samples": {
                    "every": 0,
                    "strengths": [1.0],
                    "prompts": [{"prompt": "x", "steps": 1, "width": 64, "height": 64}],
                },
            }
            for i in range(SAMPLES + 1):  # the first sample warms the stack up and is dropped
                time.sleep(IDLE_SETTLE_S)  # a benchmark pause so the worker is idle again, not a sync
                sent = datetime.now(UTC)
                job = client.submit_job(spec)
                started = _wait(
                    lambda job_id=job["id"]: [e for e in client.events(job_id) if e["type"] == "job.started"],
                    60,
                    "job.started",
                )[0]
                at = datetime.fromisoformat(started["created_at"].replace("Z", "+00:00"))
                queued = client.events(job["id"])[0]
                committed = datetime.fromisoformat(queued["created_at"].replace("Z", "+00:00"))
                ms = (at - sent).total_seconds() * 1000
                api_ms = (committed - sent).total_seconds() * 1000
                _wait(
                    lambda job_id=job["id"]: client.get_job(job_id)["status"] in ("succeeded", "failed"),
                    120,
                    "the job to end",
                )
                if i:
                    latencies.append(ms)
                    print(f"sample {i}: {ms:.1f} ms (API commit after {api_ms:.1f} ms)", flush=True)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    print(
        json.dumps(
            {
                "dispatch_ms_median": round(statistics.median(latencies), 1),
                "dispatch_ms_p90": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 1),
                "samples": len(latencies),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
