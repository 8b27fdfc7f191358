"""Job leases: the database, not the broker, decides which worker runs a job.

A worker claims a job with a compare-and-set that increments ``attempt``; that number is the
fencing token. Every later write names ``(attempt, owner)`` and changes nothing once the lease is
gone, so a worker that was paused, partitioned or superseded by a re-run can never overwrite its
successor. A heartbeat thread renews the lease every ``lease_seconds / 4``. When the database is
unreachable the heartbeat keeps retrying and training goes on; whether the lease survived is only
known when a write succeeds again, and nothing is finalised before that.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from api.db.engine import Database
from api.db.repositories.jobs import JobRepository, Lease
from core.errors import HyperforgeError

log = logging.getLogger(__name__)


class LeaseLostError(HyperforgeError):
    """The job's lease is held by someone else now (or the job left ``running``): stop, write nothing."""

    code = "lease_lost"


def worker_identity() -> str:
    """A lease owner name unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def heartbeat_interval(lease_seconds: float) -> float:
    """How often a lease is renewed: four times per lease, so three renewals may fail in a row."""
    return max(0.5, lease_seconds / 4)


@dataclass(frozen=True)
class JobLease:
    """A lease held on a job: the fencing token ``attempt`` and the ``owner`` that took it."""

    job_id: str
    owner: str
    attempt: int
    lease_seconds: float


class LeaseKeeper:
    """Renews a lease in a background thread; reports loss and cancellation through callbacks."""

    def __init__(
        self,
        db: Database,
        lease: JobLease,
        *,
        on_lost: Callable[[], None],
        on_cancel: Callable[[bool], None],
        interval: float | None = None,
    ) -> None:
        self.db = db
        self.lease = lease
        self.on_lost = on_lost
        self.on_cancel = on_cancel
        self.interval = interval if interval is not None else heartbeat_interval(lease.lease_seconds)
        self.lost = False
        self.last: Lease | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job_id}", daemon=True)

    def start(self) -> LeaseKeeper:
        """Start renewing."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (the lease then expires unless the job was finished)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def renew(self) -> Lease | None:
        """Renew once; raise ``LeaseLostError`` when the lease is gone; database errors propagate."""
        lease = self.lease
        with self.db.session() as session:
            held = JobRepository(session).renew_lease(
                lease.job_id, lease.attempt, lease.owner, lease.lease_seconds
            )
            session.commit()
        if held is None:
            raise LeaseLostError(f"lease of {lease.job_id} attempt {lease.attempt} is no longer held")
        self.last = held
        return held

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                held = self.renew()
            except LeaseLostError as exc:
                log.warning("%s", exc)
                self.lost = True
                self.on_lost()
                return
            except Exception as exc:  # database unreachable: keep training, keep trying
                log.warning("lease renewal of %s failed (%s); retrying", self.lease.job_id, exc)
                continue
            if held is not None and held.cancel_requested:
                self.on_cancel(held.cancel_save_checkpoint)
