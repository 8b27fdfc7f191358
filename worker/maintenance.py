"""The worker's maintenance process: outbox dispatch and the reconciler, in one loop.

``python -m worker.maintenance`` (started by ``hyperforge worker`` and by local mode). The API
writes an outbox row in the same transaction as the job it creates; this loop drains committed
rows every ``DISPATCH_INTERVAL_S`` and publishes the Celery tasks they announce, so nothing is
enqueued for a transaction that rolled back and nothing committed is left unannounced. Every
``reconcile_interval`` it also runs the reconciler. Any number of these loops may run at once:
the outbox rows are taken with SKIP LOCKED and every reconciler write is a compare-and-set.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery

from api.db.engine import Database
from api.services.outbox import JOB_ENQUEUE, WEBHOOK_DELIVER, drain_outbox
from api.settings import Settings, get_settings
from api.webhooks.delivery import deliver_due
from worker.celery_app import RUN_JOB_TASK, TRAINING_QUEUE, make_celery
from worker.lease import heartbeat_interval
from worker.reconciler import reconcile_once, redis_enqueued_job_ids, task_id_for

log = logging.getLogger("worker.maintenance")

DISPATCH_INTERVAL_S = 0.05
# A queued job missing from an inspectable broker (Redis) this long is re-published; the grace
# covers the moments between the API's commit and the outbox dispatch. Brokers that cannot be
# inspected get a longer interval, since every re-publish there is a duplicate message.
STALE_QUEUED_S = 10.0
UNINSPECTABLE_STALE_QUEUED_S = 120.0
WEBHOOK_SWEEP_S = 2.0


def publish_run(app: Celery, job_id: str) -> None:
    """Enqueue ``run_job(job_id)`` on the training queue (its task id names the job)."""
    app.send_task(
        RUN_JOB_TASK, args=[job_id], queue=TRAINING_QUEUE, task_id=task_id_for(job_id, uuid.uuid4().hex)
    )


def broker_inspector(app: Celery, max_unacked_age: float = STALE_QUEUED_S) -> Callable[[], set[str] | None]:
    """A function listing job ids the broker holds (Redis), or returning None (unknown: other brokers)."""
    url = str(app.conf.broker_url)
    if not url.startswith(("redis://", "rediss://")):
        return lambda: None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return lambda: redis_enqueued_job_ids(client, [TRAINING_QUEUE], max_unacked_age=max_unacked_age)


def dispatch_outbox(db: Database, publish: Callable[[str, dict[str, Any]], None]) -> int:
    """Publish committed outbox messages (``drain_outbox`` commits); returns how many."""
    with db.session() as session:
        return drain_outbox(session, publish)


def outbox_publisher(app: Celery, webhooks_due: threading.Event) -> Callable[[str, dict[str, Any]], None]:
    """The ``publish(topic, payload)`` the outbox drain calls.

    ``job.enqueue`` becomes a Celery task on the training queue. ``webhook.deliver`` wakes this
    process's webhook sender at once (rather than a task on the default queue, which a worker
    busy training for hours would not get to).
    """

    def publish(topic: str, payload: dict[str, Any]) -> None:
        if topic == JOB_ENQUEUE:
            publish_run(app, str(payload["job_id"]))
        elif topic == WEBHOOK_DELIVER:
            webhooks_due.set()
        else:
            log.warning("outbox topic %r has no publisher; dropped", topic)

    return publish


class WebhookSender(threading.Thread):
    """Sends due webhook deliveries every ``WEBHOOK_SWEEP_S`` and whenever woken (retries included)."""

    def __init__(
        self, db: Database, settings: Settings, wake: threading.Event, stop: threading.Event
    ) -> None:
        super().__init__(name="webhook-sender", daemon=True)
        self.db, self.settings, self.wake, self.stop = db, settings, wake, stop

    def run(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(WEBHOOK_SWEEP_S)
            self.wake.clear()
            try:
                while not self.stop.is_set() and deliver_due(self.db.session, settings=self.settings):
                    pass  # a full batch went out: there may be more due
            except Exception as exc:
                log.warning("webhook delivery sweep failed (%s)", exc)


class MaintenanceLoop:
    """Drains the outbox often and reconciles now and then until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        *,
        dispatch: bool = True,
        reconcile: bool = True,
        app: Celery | None = None,
        db: Database | None = None,
    ) -> None:
        self.settings = settings
        self.dispatch = dispatch
        self.reconcile = reconcile
        self.app = app or make_celery()
        self.db = db or Database.from_url(settings.effective_database_url, pool_size=2, max_overflow=2)
        self.reconcile_interval = heartbeat_interval(settings.lease_seconds)
        self._stop = threading.Event()
        self._webhooks_due = threading.Event()
        self._publish_outbox = outbox_publisher(self.app, self._webhooks_due)
        self._sender = WebhookSender(self.db, settings, self._webhooks_due, self._stop) if dispatch else None
        self._in_broker = broker_inspector(self.app)
        inspectable = str(self.app.conf.broker_url).startswith(("redis://", "rediss://"))
        self.stale_after = STALE_QUEUED_S if inspectable else UNINSPECTABLE_STALE_QUEUED_S

    def stop(self) -> None:
        """End the loop after the current pass."""
        self._stop.set()
        self._webhooks_due.set()

    def run(self) -> None:
        """Loop until ``stop``; errors are logged and the next pass tries again."""
        next_reconcile = 0.0
        if self._sender is not None:
            self._sender.start()
        while not self._stop.is_set():
            busy = False
            if self.dispatch:
                try:
                    busy = dispatch_outbox(self.db, self._publish_outbox) > 0
                except Exception as exc:
                    log.warning("outbox dispatch failed (%s)", exc)
                    self._stop.wait(1.0)
            if self.reconcile and time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self.reconcile_interval
                try:
                    reconcile_once(
                        self.db,
                        lambda job_id: publish_run(self.app, job_id),
                        in_broker=self._in_broker,
                        stale_after=max(self.stale_after, self.reconcile_interval),
                    )
                except Exception as exc:
                    log.warning("reconcile pass failed (%s)", exc)
            if not busy:
                self._stop.wait(DISPATCH_INTERVAL_S if self.dispatch else self.reconcile_interval)


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.maintenance [--no-dispatch] [--no-reconcile]``."""
    parser = argparse.ArgumentParser(prog="worker.maintenance")
    parser.add_argument("--no-dispatch", action="store_true")
    parser.add_argument("--no-reconcile", action="store_true")
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = MaintenanceLoop(settings, dispatch=not args.no_dispatch, reconcile=not args.no_reconcile)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop())
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
