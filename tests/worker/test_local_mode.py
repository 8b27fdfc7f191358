"""``hyperforge local`` brings the whole service up (SQLite, embedded broker, files) and
``hyperforge demo`` trains on it end to end; both run as real subprocesses. A worker killed under
local mode's supervisor is restarted and its job resumes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.data.demo import write_demo_dataset
from core.hypernetwork.fileformat import load_pt
from tests.worker.conftest import ROOT, TINY_WIDTHS, free_port, wait_for
from worker.client import Client

pytestmark = [pytest.mark.slow]


@dataclass
class Local:
    """A running ``hyperforge local``: its process, URL, dev key, environment and log."""

    proc: subprocess.Popen[bytes]
    url: str
    key: str
    env: dict[str, str]
    log: Path


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    with contextlib.suppress(FileNotFoundError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    return b""


def _supervised_worker(local: Local) -> int | None:
    """The pid of the supervisor's worker child (``core.cli worker --hostname local@...``), if running."""
    for pid in _children(local.proc.pid):
        cmd = _cmdline(pid)
        if b" worker " in cmd and b"local@" in cmd:
            return pid
    return None


@contextlib.contextmanager
def _local_mode(tmp_path: Path) -> Iterator[Local]:
    """Start ``hyperforge local`` (lease 5 s) on a free port, wait until it serves; stop its tree after."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFORGE_")}
    env.update({"HYPERFORGE_LEASE_SECONDS": "5", "HYPERFORGE_LOG_JSON": "false", "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "local.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "local", "--port", str(port), "--data-dir", str(data_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    groups: set[int] = set()  # the supervised children, each its own process group
    try:
        key_file = data_dir / "dev-api-key"
        wait_for(
            lambda: (
                proc.poll() is None and key_file.exists() and httpx.get(f"{url}/healthz").status_code == 200
            ),
            timeout=120,
            what=f"local mode to start (log {log})",
        )
        yield Local(proc, url, key_file.read_text().strip(), env, log)
    finally:
        groups.update(_children(proc.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the supervisor stops its children's groups
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            for group in groups:  # the supervisor did not get to stop them
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)


def test_local_mode_runs_the_demo_end_to_end(tmp_path: Path) -> None:
    """The dev key is printed and written, the tiny model is offered, the demo job succeeds and its
    downloaded ``.pt`` loads."""
    out = tmp_path / "out"
    with _local_mode(tmp_path) as local:
        key, url = local.key, local.url
        assert key.startswith("hf_live_") and key in local.log.read_text()
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        assert [m["name"] for m in models["data"]] == ["tiny"]
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "core.cli",
                "demo",
                "--url",
                url,
                "--api-key",
                key,
                "--steps",
                "6",
                "--out",
                str(out),
            ],
            env=local.env,
            capture_output=True,
            text=True,
            timeout=400,
            cwd=ROOT,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        [release] = list(out.rglob("hatchwork-demo.pt"))
        assert load_pt(release).step == 6
        assert str(release.parent.resolve()) in demo.stdout


def test_local_mode_restarts_a_killed_worker_and_its_job_resumes(tmp_path: Path) -> None:
    """SIGKILL of the supervised worker mid-training: the supervisor starts a new one, the lease runs
    out, the reconciler re-queues the job and it resumes from its last checkpoint to one release."""
    steps, every = 400, 10  # ~13 s of training here: ample margin for the kill to land mid-run
    with _local_mode(tmp_path) as local, Client(local.url, local.key) as client:
        images = write_demo_dataset(tmp_path / "demo", count=4, seed=0, size=64)
        dataset = client.upload_dataset([*images, *(p.with_suffix(".txt") for p in images)], name="demo")
        [model] = client.list_models()
        job_id = client.submit_job(
            {
                "name": "supervised",
                "dataset_id": dataset["id"],
                "base_model": model["id"],
                "hypernetwork": {"layer_structure": [1, 2, 1], "enable_sizes": TINY_WIDTHS},
                "training": {"learn_rate": "1e-4", "steps": steps, "width": 64, "height": 64, "seed": 7},
                "checkpoints": {"save_every": every, "save_optimizer_state": True},
                "samples": {"every": 0, "prompts": [], "strengths": [1.0]},
            }
        )["id"]

        def checkpoint_steps() -> list[int]:
            return [
                int(e["data"]["step"])
                for e in client.events(job_id, limit=1000)
                if e["type"] == "job.checkpoint"
            ]

        wait_for(checkpoint_steps, timeout=120, what=f"a first checkpoint of {job_id} (log {local.log})")
        first = _supervised_worker(local)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        killed_at = max(checkpoint_steps())
        assert killed_at < steps, "the job finished before the worker was killed: give it more steps"

        wait_for(
            lambda: (pid := _supervised_worker(local)) is not None and pid != first,
            timeout=30,
            what="the supervisor to restart the worker",
        )
        job = wait_for(
            lambda: (j := client.get_job(job_id))["status"] in {"succeeded", "failed", "cancelled"} and j,
            timeout=90,
            what=f"{job_id} to end (log {local.log})",
        )
        assert job["status"] == "succeeded", job.get("error")
        assert job["attempt"] >= 2
        assert job["resumed_from_step"] is not None and job["resumed_from_step"] >= killed_at > 0
        resumed = [e for e in client.events(job_id, limit=1000) if e["type"] == "job.resumed"]
        assert resumed and resumed[-1]["data"]["resumed_from_step"] == job["resumed_from_step"]
        assert [a["kind"] for a in client.artifacts(job_id)].count("hypernetwork") == 1
