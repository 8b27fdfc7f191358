"""Prometheus metrics: HTTP requests (counted by the middleware) and service gauges read at scrape time.

Each app has its own ``CollectorRegistry`` (tests build many apps in one process). The service
collector asks the database on every scrape (jobs by status, outbox backlog, recent job durations,
steps/s of running jobs) and, with a Redis broker, the length of the Celery queues.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Final

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.db.engine import Database
from api.db.repositories import JobRepository, OutboxRepository
from api.db.types import utcnow

logger = logging.getLogger("api.metrics")
QUEUES: Final = ("training", "default")
DURATION_BUCKETS: Final = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)


class HttpMetrics:
    """The HTTP request metrics of one app."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "hyperforge_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "hyperforge_http_request_duration_seconds",
            "Time to the end of the response, by method and route template.",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )


class RedisBroker:
    """The Redis the Celery broker URL names: ping for /readyz, queue lengths for /metrics."""

    def __init__(self, url: str) -> None:
        self.client: Any = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    def ping(self) -> None:
        """Raise unless Redis answers."""
        self.client.ping()

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per Celery queue (a Redis list per queue)."""
        return {queue: int(self.client.llen(queue)) for queue in QUEUES}


def broker_for(url: str) -> RedisBroker | None:
    """A Redis probe for a ``redis://``/``rediss://`` broker URL; None for any other broker."""
    return RedisBroker(url) if url.startswith(("redis://", "rediss://")) else None


class ServiceCollector(Collector):
    """Job and queue gauges, read from the database (and Redis) when Prometheus scrapes."""

    def __init__(self, database: Database, broker: RedisBroker | None) -> None:
        self.database = database
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges; a failing source is logged and its metrics left out of this scrape."""
        try:
            yield from self._from_database()
        except Exception:
            logger.warning("metrics: database unavailable", exc_info=True)
        if self.broker is not None:
            try:
                depths = self.broker.queue_depths()
            except Exception:
                logger.warning("metrics: broker unavailable", exc_info=True)
            else:
                gauge = GaugeMetricFamily(
                    "hyperforge_queue_depth", "Messages waiting in the broker queue.", labels=["queue"]
                )
                for queue, depth in depths.items():
                    gauge.add_metric([queue], depth)
                yield gauge

    def _from_database(self) -> Iterator[Metric]:
        with self.database.session() as session:
            jobs = JobRepository(session)
            counts = jobs.count_by_status()
            backlog = OutboxRepository(session).pending_count()
            durations = jobs.finished_durations(utcnow() - timedelta(days=1))
            progress = jobs.running_progress()
        by_status = GaugeMetricFamily("hyperforge_jobs", "Jobs by status.", labels=["status"])
        for status, count in counts.items():
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "hyperforge_outbox_pending", "Outbox messages not yet handed to the broker.", value=backlog
        )
        yield _histogram(
            "hyperforge_job_duration_seconds",
            "Start-to-finish time of jobs finished in the last 24 h.",
            durations,
        )
        steps = sum(float(p.get("samples_per_second") or 0.0) for p in progress)
        yield GaugeMetricFamily(
            "hyperforge_training_samples_per_second",
            "Sum of the running jobs' samples per second.",
            value=steps,
        )


def _histogram(name: str, documentation: str, values: list[float]) -> HistogramMetricFamily:
    """A histogram family built from raw observations."""
    buckets: list[tuple[str, float]] = []
    for bound in DURATION_BUCKETS:
        buckets.append((str(bound), float(sum(1 for v in values if v <= bound))))
    buckets.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum(values))
