"""API load and upload memory benchmark (issue 6).

1. ``GET /v1/jobs/{id}`` under 32 concurrent keep-alive connections against the real app on
   Postgres (``create_served_app``, as ``hyperforge serve`` runs it: JSON access log on, start-up
   heap frozen out of the cyclic GC's full collections), side by side with a bare
   FastAPI route doing one primary-key select on the same database, both served by uvicorn in
   subprocesses on loopback with the same flags (uvloop, httptools, ``--workers``, default 2, one
   per core) and the same pool size. The load comes from ``_http_load``, a raw-socket HTTP/1.1
   client that costs a few hundredths of a millisecond per request, so on two cores it does not
   starve the servers it measures (httpx cost more per request than the route itself). A fixed
   number of requests per round; rounds alternate bare/api so drift hits both; the best round of
   each counts. Server CPU per request (workers included) is reported too: unlike throughput and
   latency it barely depends on what else the machine is running.
2. A 1 GiB dataset upload (a zip of generated, incompressible PNGs with captions, written to a
   temporary file first and streamed by the client) to a fresh one-process API; its peak RSS
   (``VmHWM``) growth over its warmed-up peak is reported.

Ends by printing one JSON line: ``throughput_ratio``, ``p99_ms``, ``upload_rss_growth_mb`` (and
the raw numbers, with the load average before and after). Targets on the 2-core development
machine: ratio >= 0.6, p99 <= 50 ms, growth <= 64 MiB. Postgres comes from
``HYPERFORGE_BENCH_DATABASE_URL`` (default: this machine's).
Run: ``.venv/bin/python bench/api_load.py [--requests N] [--rounds R] [--workers W] [--upload-mib M]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _http_load import run_load

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONCURRENCY = 32
# Connections are opened this far apart (untimed), so uvicorn's workers each accept a share of them
# as they would of clients arriving over time; a burst would mostly land on one worker.
CONNECT_INTERVAL = 0.02
POOL_SIZE = 10  # the app's default database_pool_size; the bare app gets the same
# Both servers: the same flags (uvloop and httptools named, not left to "auto"), the same --workers.
UVICORN_FLAGS = [
    "--host",
    "127.0.0.1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


# -- the bare baseline app (imported by uvicorn in its own process) ---------------------------------


def bare_app() -> Any:
    """A bare FastAPI app: one route, one primary-key select on the jobs table, nothing else."""
    from fastapi import FastAPI
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import sessionmaker

    from api.db.models import Job

    engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
    sessions = sessionmaker(bind=engine)
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        with sessions() as session:
            job = session.scalars(select(Job).where(Job.id == job_id)).one()
            return {"id": job.id, "status": job.status, "progress": job.progress}

    return app


# -- set-up -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bench_database(base_url: str) -> Iterator[str]:
    """A fresh migrated database (dropped afterwards)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from api.db.migrate import upgrade

    name = f"hf_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(url: str) -> tuple[str, str]:
    """A tenant with a key, a dataset, a model and one running job with progress; (api key, job id)."""
    from api.db.engine import Database
    from api.db.models import Dataset, Job
    from api.db.repositories import BaseModelRepository, DatasetRepository, JobRepository
    from api.services.tenants import create_tenant
    from api.settings import Settings

    database = Database.from_url(url)
    with database.session() as session:
        created = create_tenant(session, Settings(database_url=url), "bench")
        tenant_id = created.tenant.id
        dataset = DatasetRepository(session).add(
            Dataset(tenant_id=tenant_id, name="d", status="ready", storage_prefix=f"tenants/{tenant_id}/d/")
        )
        model = BaseModelRepository(session).add(
            name=f"sd15-{uuid.uuid4().hex[:6]}", arch="sd1", format="diffusers", uri="/m", sha256_short=None
        )
        spec = {
            "name": "inkwash",
            "dataset_id": dataset.id,
            "base_model": model.name,
            "training": {"steps": 10000},
        }
        job = JobRepository(session).add(
            Job(
                tenant_id=tenant_id,
                name="inkwash",
                status="running",
                dataset_id=dataset.id,
                base_model_id=model.id,
                spec=spec,
                resolved_spec={**spec, "hypernetwork": {"layer_structure": [1, 2, 1]}},
                progress={"step": 1200, "total_steps": 10000, "loss": 0.11, "learn_rate": 5e-6},
                attempt=1,
                metadata_={},
            )
        )
        session.commit()
        key, job_id = created.key.secret, job.id
    database.dispose()
    return key, job_id


API_TARGET = ["api.app:create_served_app", "--factory"]  # as ``hyperforge serve`` runs it
BARE_TARGET = ["api_load:bare_app", "--factory", "--app-dir", str(ROOT / "bench")]


@contextmanager
def server(target: list[str], env: dict[str, str], workers: int = 1) -> Iterator[tuple[str, int, int]]:
    """A uvicorn subprocess serving ``target``; yields (base URL, port, pid) once it answers.

    Its stderr (the API's JSON log lines) goes to a file, shown when it fails to start. With
    ``workers > 1`` the pid is uvicorn's supervisor and the workers are its children.
    """
    port = _free_port()
    flags = [*UVICORN_FLAGS, "--workers", str(workers)]
    cmd = [sys.executable, "-m", "uvicorn", *target, "--port", str(port), *flags]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stderr=log)
        try:
            while True:
                try:
                    httpx.get(base + "/docs", timeout=1)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        tail = log.read()[-4000:].decode(errors="replace")
                        raise RuntimeError(f"{target} did not start:\n{tail}") from None
                    time.sleep(0.1)  # waiting for a child process to bind its port
            yield base, port, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=20)


# -- load ---------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (uvicorn's workers), from ``/proc``."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # fields[1]: the parent's pid
        except OSError:  # a process that exited meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


Round = tuple[float, list[float], float, float]


def _round(port: int, pid: int, path: str, headers: dict[str, str], total: int) -> Round:
    """One measured round: (requests/s, latencies, server and client CPU ms per request)."""
    cpu, own = _cpu_seconds(pid), time.process_time()
    result = run_load(
        "127.0.0.1",
        port,
        path,
        headers,
        total=total,
        concurrency=CONCURRENCY,
        connect_interval=CONNECT_INTERVAL,
    )
    server_ms = (_cpu_seconds(pid) - cpu) * 1000 / total
    return result.rps, result.latencies, server_ms, (time.process_time() - own) * 1000 / total


def _p99_ms(latencies: list[float]) -> float:
    return round(statistics.quantiles(latencies, n=100)[98] * 1000, 2)


def measure_load(url: str, requests: int, rounds: int, workers: int) -> dict[str, Any]:
    """Throughput of the app's GET /v1/jobs/{id} against the bare route, best round of each."""
    key, job_id = seed(url)
    path = f"/v1/jobs/{job_id}"
    with tempfile.TemporaryDirectory() as data_dir:
        api_env = {
            "HYPERFORGE_DATABASE_URL": url,
            "HYPERFORGE_DATA_DIR": data_dir,
            "HYPERFORGE_DATABASE_POOL_SIZE": str(POOL_SIZE),
        }
        bare_env = {"BENCH_DATABASE_URL": url}
        with (
            server(API_TARGET, api_env, workers) as (_, api_port, api_pid),
            server(BARE_TARGET, bare_env, workers) as (_, bare_port, bare_pid),
        ):
            auth = {"Authorization": f"Bearer {key}"}
            # Warm-up: imports, caches and pools. Several batches of fresh connections, as uvicorn's
            # workers split each batch differently and each worker's pool grows to what it gets.
            for port, headers in ((api_port, auth), (bare_port, {})):
                for _ in range(4):
                    run_load(
                        "127.0.0.1",
                        port,
                        path,
                        headers,
                        total=500,
                        concurrency=CONCURRENCY,
                        connect_interval=CONNECT_INTERVAL,
                    )
            results: dict[str, list[Round]] = {"api": [], "bare": []}
            for _ in range(rounds):
                results["bare"].append(_round(bare_port, bare_pid, path, {}, requests))
                results["api"].append(_round(api_port, api_pid, path, auth, requests))
    api_rps, api_lat, api_cpu, client_cpu = max(results["api"], key=lambda r: r[0])
    bare_rps, bare_lat, bare_cpu, _ = max(results["bare"], key=lambda r: r[0])
    return {
        "throughput_ratio": round(api_rps / bare_rps, 3),
        "p99_ms": _p99_ms(api_lat),
        "api_rps": round(api_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "api_p50_ms": round(statistics.median(api_lat) * 1000, 2),
        "bare_p99_ms": _p99_ms(bare_lat),
        # Server CPU per request: the contention-independent cost (the machine may be shared).
        "api_cpu_ms_per_request": round(api_cpu, 3),
        "bare_cpu_ms_per_request": round(bare_cpu, 3),
        "client_cpu_ms_per_request": round(client_cpu, 3),
        "cpu_ratio": round(bare_cpu / api_cpu, 3),
        # Every round's p99, to show how much the machine's other load moved it.
        "api_p99_ms_rounds": [_p99_ms(r[1]) for r in results["api"]],
        "bare_p99_ms_rounds": [_p99_ms(r[1]) for r in results["bare"]],
        "requests_per_round": requests,
        "rounds": rounds,
        "workers": workers,
    }


# -- upload -------------------------------------------------------------------------------------------


def write_dataset_zip(path: Path, total_bytes: int) -> int:
    """A stored (uncompressed) zip of distinct random-noise 1024x1024 PNGs and captions, ~``total_bytes``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    written = 0
    count = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        while written < total_bytes:
            pixels = rng.integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=0)
            zf.writestr(f"images/{count:05d}.png", buf.getvalue())
            zf.writestr(f"images/{count:05d}.txt", f"noise sample {count}, inkwash style")
            written += buf.tell()
            count += 1
    return count


def _vm(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field in bytes (VmHWM: peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_upload(url: str, upload_bytes: int) -> dict[str, Any]:
    """Peak RSS growth of a fresh API process while it takes a ``upload_bytes`` dataset upload."""
    key, _ = seed(url)
    auth = {"Authorization": f"Bearer {key}"}
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "big.zip"
        images = write_dataset_zip(archive, upload_bytes)
        small = Path(tmp) / "small.zip"
        write_dataset_zip(small, 1)
        env = {"HYPERFORGE_DATABASE_URL": url, "HYPERFORGE_DATA_DIR": str(Path(tmp) / "data")}
        with (
            server(API_TARGET, env) as (base, _, pid),
            httpx.Client(base_url=base, headers=auth, timeout=1800) as client,
        ):
            with small.open("rb") as fh:  # warm-up: the whole upload path once, small
                warm = client.post("/v1/datasets", files={"archive": ("small.zip", fh, "application/zip")})
            assert warm.status_code == 201, warm.text
            before = _vm(pid, "VmHWM")
            began = time.perf_counter()
            with archive.open("rb") as fh:
                response = client.post("/v1/datasets", files={"archive": ("big.zip", fh, "application/zip")})
            seconds = time.perf_counter() - began
            assert response.status_code == 201, response.text[:500]
            after = _vm(pid, "VmHWM")
            accepted = response.json()["report"]["accepted"]
        archive_bytes = archive.stat().st_size
    return {
        "upload_rss_growth_mb": round((after - before) / 2**20, 1),
        "upload_bytes": archive_bytes,
        "upload_images": images,
        "upload_accepted": accepted,
        "upload_seconds": round(seconds, 1),
        "api_peak_rss_before_mb": round(before / 2**20, 1),
    }


def main() -> None:
    """Run both measurements and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per round and target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of both servers")
    parser.add_argument("--upload-mib", type=int, default=1024, help="0 skips the upload measurement")
    args = parser.parse_args()
    base = os.environ.get("HYPERFORGE_BENCH_DATABASE_URL", DEFAULT_DB)
    load_before = os.getloadavg()[0]
    with bench_database(base) as url:
        result = measure_load(url, args.requests, args.rounds, args.workers)
        result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if args.upload_mib > 0:
            result.update(measure_upload(url, args.upload_mib * 2**20))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
