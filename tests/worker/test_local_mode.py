"""``hyperforge local`` brings the whole service up (SQLite, embedded broker, files) and
``hyperforge demo`` trains on it end to end; both run as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.hypernetwork.fileformat import load_pt
from tests.worker.conftest import ROOT, free_port, wait_for

pytestmark = [pytest.mark.slow]


def test_local_mode_runs_the_demo_end_to_end(tmp_path: Path) -> None:
    """The dev key is printed and written, the tiny model is offered, the demo job succeeds and its
    downloaded ``.pt`` loads."""
    data_dir, out = tmp_path / "data", tmp_path / "out"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFORGE_")}
    env.update({"HYPERFORGE_LEASE_SECONDS": "5", "HYPERFORGE_LOG_JSON": "false", "PYTHONUNBUFFERED": "1"})
    log = (tmp_path / "local.log").open("wb")
    local = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "local", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        key_file = data_dir / "dev-api-key"
        wait_for(
            lambda: (
                local.poll() is None and key_file.exists() and httpx.get(f"{url}/healthz").status_code == 200
            ),
            timeout=120,
            what=f"local mode to start (log {log.name})",
        )
        key = key_file.read_text().strip()
        assert key.startswith("hf_live_") and key in (tmp_path / "local.log").read_text()
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
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
            cwd=ROOT,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        [release] = list(out.rglob("hatchwork-demo.pt"))
        assert load_pt(release).step == 6
        assert str(release.parent.resolve()) in demo.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(local.pid, signal.SIGTERM)
        try:
            local.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(local.pid, signal.SIGKILL)
            local.wait(timeout=10)
