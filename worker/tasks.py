"""Celery tasks: thin edges that take an id and call the code that does the work.

``run_job`` is delivered at least once (late ack, redelivery after a lost worker, the reconciler's
re-enqueue); the runner's compare-and-set claim makes every delivery but one a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_process_init

from worker.celery_app import DELIVER_WEBHOOK_TASK, RUN_JOB_TASK, app

log = logging.getLogger(__name__)


@worker_init.connect
def _preload(**_kwargs: Any) -> None:
    """Import the runner (torch, diffusers) once in the parent so forked children start warm.

    Importing torch does not initialise CUDA; each job's child does that after the fork. The
    database engine is warmed up here too (its connections are dropped before any fork).
    """
    from worker.runner import warm_up_parent

    warm_up_parent()


@worker_process_init.connect
def _child_start(**_kwargs: Any) -> None:
    """Each pool process opens its own database connection before its job arrives."""
    from worker.runner import warm_up_child

    warm_up_child()


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Claim and run one training job; returns how the delivery ended (``ran``, ``skipped``...)."""
    from worker.runner import run_job as run

    outcome = run(job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome


@app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
def deliver_webhooks(event_id: str | None = None) -> int:
    """Send every due webhook delivery (for a dedicated ``--queues default`` worker); returns how many."""
    from api.db.engine import Database
    from api.settings import get_settings
    from api.webhooks.delivery import deliver_due

    settings = get_settings()
    db = Database.from_url(settings.effective_database_url, pool_size=1, max_overflow=1)
    try:
        return len(deliver_due(db.session, settings=settings))
    finally:
        db.dispose()
