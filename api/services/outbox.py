"""Draining the transactional outbox: hand committed messages to the broker, then mark them.

The API never imports Celery: the worker side passes ``publish(topic, payload)``. Topics:
``job.enqueue`` ``{job_id}`` (run the job) and ``webhook.deliver`` ``{event_id}`` (deliver the
event's pending webhook deliveries now rather than at the next sweep). Delivery is at least
once: a crash between publishing and marking re-publishes, which the worker's claim and the
deliveries' compare-and-set make harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from api.db.repositories import OutboxRepository

JOB_ENQUEUE = "job.enqueue"
WEBHOOK_DELIVER = "webhook.deliver"

Publish = Callable[[str, dict[str, Any]], None]


def drain_outbox(session: Session, publish: Publish, *, limit: int = 100) -> int:
    """Publish up to ``limit`` pending messages in order, mark them dispatched and commit; return how many.

    If ``publish`` raises (broker down), the messages published so far are marked and committed
    and the error propagates; the rest stay pending for the next drain.
    """
    outbox = OutboxRepository(session)
    published: list[str] = []
    try:
        for message in outbox.pending(limit=limit):
            publish(message.topic, dict(message.payload))
            published.append(message.id)
    finally:
        outbox.mark_dispatched(published)
        session.commit()
    return len(published)
