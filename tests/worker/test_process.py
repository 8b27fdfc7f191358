"""Local mode's supervisor restarts dead children (and kills what they left); the Celery settings
are the ones long GPU jobs need."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.worker.conftest import wait_for
from worker.celery_app import VISIBILITY_TIMEOUT_S, celery_config
from worker.supervisor import Child, Supervisor

# A child that starts a grandchild (as a Celery worker starts its pool) and records both pids.
_SPAWNER = """
import subprocess, sys, time, pathlib
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path(sys.argv[1]).write_text(f"{grand.pid}")
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status != "Z"


def test_a_dead_child_is_restarted_and_its_leftovers_killed(tmp_path: Path) -> None:
    """Killing the child restarts it; the grandchild it left behind does not survive."""
    marker = tmp_path / "grandchild.pid"
    child = Child("spawner", [sys.executable, "-c", _SPAWNER, str(marker)])
    supervisor = Supervisor([child])
    supervisor.start()
    try:
        grandchild = int(
            wait_for(lambda: marker.exists() and marker.read_text(), timeout=30, what="the grandchild")
        )
        first = child.proc
        assert first is not None
        marker.unlink()
        first.kill()
        first.wait(timeout=10)
        supervisor.check_once()
        assert child.restarts == 1 and child.proc is not None and child.proc.pid != first.pid
        wait_for(lambda: not _alive(grandchild), timeout=10, what="the orphaned grandchild to be killed")
        wait_for(lambda: marker.exists(), timeout=30, what="the restarted child to run")
    finally:
        supervisor.stop(timeout=5)
    assert child.proc is not None and child.proc.poll() is not None


def test_celery_settings_for_long_gpu_jobs() -> None:
    """Nothing reserved ahead, late acks, one job per process, no reliance on Redis's visibility timeout."""
    conf = celery_config("redis://127.0.0.1:6379/5")
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_max_tasks_per_child"] == 1 and conf["worker_concurrency"] == 1
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert conf["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT_S >= 24 * 3600
    assert conf["task_ignore_result"] is True and conf["result_backend"] is None
    assert {q.name for q in conf["task_queues"]} == {"training", "default"}
    local = celery_config("sqla+sqlite:////tmp/broker.sqlite")
    assert "visibility_timeout" not in local["broker_transport_options"]
