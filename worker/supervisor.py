"""A tiny process supervisor: keeps named children running, restarts the ones that die.

Each child runs in its own session (process group), so when one dies its whole tree goes with it
(a Celery worker's pool children must not outlive their parent and keep a job's lease alive), and
stopping the supervisor stops every tree.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0
STABLE_AFTER_S = 30.0  # a child that ran this long resets its restart backoff


@dataclass
class Child:
    """One supervised command."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = field(default=0.5)

    def start(self) -> None:
        """Start the command in a new session."""
        self.proc = subprocess.Popen(
            list(self.argv), env=dict(self.env) if self.env else None, start_new_session=True
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole process group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class Supervisor:
    """Runs children until ``stop()`` (or SIGINT/SIGTERM in ``run``), restarting any that exits."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = list(children)
        self._stop = threading.Event()

    def start(self) -> None:
        """Start every child."""
        for child in self.children:
            child.start()

    def check_once(self) -> None:
        """Restart children that exited (their process group is killed first), with backoff."""
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None or proc.poll() is None:
                continue
            # Whatever the child left behind (pool processes, helpers) goes with it.
            child.kill_tree()
            if now - child.started_at > STABLE_AFTER_S:
                child.backoff = 0.5
            log.warning("%s exited with %s; restarting in %.1f s", child.name, proc.returncode, child.backoff)
            if self._stop.wait(child.backoff):
                return
            child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)
            child.restarts += 1
            child.start()

    def run(self, poll_s: float = 0.5) -> None:
        """Start, supervise until SIGINT/SIGTERM, then stop every child."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def _on_signal(signum: int, _frame: object) -> None:
            self._stop.set()

        for s in previous:
            signal.signal(s, _on_signal)
        try:
            self.start()
            while not self._stop.wait(poll_s):
                self.check_once()
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask every child to end (SIGTERM to its group), then kill what is left."""
        self._stop.set()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.kill_tree(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            child.kill_tree(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)
