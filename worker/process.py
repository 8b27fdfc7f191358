"""``hyperforge worker``: a Celery worker plus its maintenance process (outbox dispatch, reconciler).

The Celery worker runs in the foreground with the prefork pool: the parent process consumes
messages and never touches CUDA; each job runs in a child forked for it
(``worker_max_tasks_per_child=1``). The maintenance loop runs in a separate process (not a thread
of the Celery parent, so nothing is forked while it holds locks or connections), restarted if it
dies, and ended with the worker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from worker.celery_app import make_celery


def _maintenance_command(dispatch: bool, reconcile: bool) -> list[str]:
    cmd = [sys.executable, "-m", "worker.maintenance"]
    if not dispatch:
        cmd.append("--no-dispatch")
    if not reconcile:
        cmd.append("--no-reconcile")
    return cmd


class _Keeper:
    """Keeps one child process running until ``stop``; restarts it with a short backoff if it dies."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(self.command)
            self.proc.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started > 30:
                backoff = 0.5
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def stop(self) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_worker(
    *,
    queues: list[str],
    concurrency: int = 1,
    hostname: str | None = None,
    dispatch: bool = True,
    reconcile: bool = True,
    loglevel: str = "INFO",
) -> int:
    """Run the Celery worker (foreground) and its maintenance process until a signal ends them."""
    keeper = _Keeper(_maintenance_command(dispatch, reconcile)) if dispatch or reconcile else None
    if keeper is not None:
        keeper.start()
    app = make_celery()
    name = hostname or f"worker@{socket.gethostname()}-{os.getpid()}"
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        f"--hostname={name}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    finally:
        if keeper is not None:
            keeper.stop()
    return 0
