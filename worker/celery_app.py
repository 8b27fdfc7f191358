"""The Celery application: queues, and the settings that suit hours-long GPU jobs.

Why each setting (Celery's user guide, "Optimizing" and "Using Redis"):

- ``worker_prefetch_multiplier=1`` and ``task_acks_late``: a worker reserves nothing ahead of the job it
  runs, so a queued job is never stuck behind another job on a busy worker while an idle one waits.
- ``task_reject_on_worker_lost``: a pool child that dies (OOM, SIGKILL) gives its message back instead
  of acking it. The database decides whether it may run again (see below).
- ``worker_max_tasks_per_child=1`` with the prefork pool and concurrency 1: each job runs in a fresh
  process forked from a parent that never touched CUDA (nothing here or in ``worker.tasks`` imports
  torch at import time), so CUDA is initialised once per child and freed with it.
- ``worker_cancel_long_running_tasks_on_connection_loss``: a late-acked task cannot be acked after the
  broker connection drops, and the broker will redeliver it; the running copy is cancelled rather
  than left to run twice.
- Redis's ``visibility_timeout`` is **not** what keeps a job alive. With Redis, an unacked message is
  redelivered once the visibility timeout passes, which for hours-long jobs would mean a second
  delivery while the first still runs. It is set far beyond any job's length; liveness comes from
  the job's lease in the database (a heartbeat renews it every few seconds), and the reconciler
  re-enqueues jobs whose lease expired or whose message the broker lost. A redelivered or duplicate
  message is harmless: the claim is a compare-and-set, so only one delivery runs the job.
- No result backend: job state lives in the jobs table, never in Celery results.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from api.settings import Settings, get_settings

TRAINING_QUEUE = "training"
DEFAULT_QUEUE = "default"
RUN_JOB_TASK = "hyperforge.run_job"
DELIVER_WEBHOOK_TASK = "hyperforge.deliver_webhooks"
# A week: far longer than any job, so Redis never redelivers a message that is still being worked
# on; the database lease, not this timeout, detects dead workers.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def broker_url_for(settings: Settings) -> str:
    """The broker URL: ``HYPERFORGE_BROKER_URL``, or local mode's SQLite broker in ``data_dir``."""
    if settings.broker_url:
        return settings.broker_url
    return f"sqla+sqlite:///{(settings.data_dir / 'broker.sqlite').resolve().as_posix()}"


def celery_config(broker_url: str) -> dict[str, Any]:
    """The Celery configuration for a broker URL (Redis in production, SQLAlchemy/SQLite locally)."""
    transport_options: dict[str, Any] = {}
    if broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        transport_options["visibility_timeout"] = VISIBILITY_TIMEOUT_S
    # kombu's SQLAlchemy transport (local mode) passes its transport options to create_engine, so it
    # gets none; it polls its SQLite table once a second.
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_queues": (
            Queue(TRAINING_QUEUE, Exchange(TRAINING_QUEUE, type="direct"), routing_key=TRAINING_QUEUE),
            Queue(DEFAULT_QUEUE, Exchange(DEFAULT_QUEUE, type="direct"), routing_key=DEFAULT_QUEUE),
        ),
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": {
            RUN_JOB_TASK: {"queue": TRAINING_QUEUE},
            DELIVER_WEBHOOK_TASK: {"queue": DEFAULT_QUEUE},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_heartbeat": 0,
        "timezone": "UTC",
        "enable_utc": True,
    }


def make_celery(broker_url: str | None = None) -> Celery:
    """A configured Celery app; tasks are registered by importing ``worker.tasks``."""
    app = Celery("hyperforge")
    app.conf.update(celery_config(broker_url or broker_url_for(get_settings())))
    app.conf.imports = ("worker.tasks",)
    return app


app = make_celery()
