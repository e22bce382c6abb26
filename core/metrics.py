"""Prometheus metrics: how a process serves them, the queue read from SQL, and the sweep's.

Names follow Prometheus' conventions: a ``covidscan_`` prefix, base units (seconds, ratios),
``_total`` on counters, and labels with a bounded set of values (model name and version,
precision, status, priority, route; never a job, scan or owner id). Each process defines
what it updates: :mod:`api.metrics` (HTTP requests, the queue at scrape time),
:mod:`worker.metrics` (batches, stage timings, models, leases) and this module (what the
core counts whatever the process: submissions, which the API and the DICOM listener take,
retrievals, which the DICOM gateway runs, and the sweep's, which workers and
``covidscan sweep`` both run).

The API under gunicorn runs several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set,
prometheus_client keeps every process's values in files there and ``/metrics`` adds them up.
Workers and the sweep are single processes that serve their own ``/metrics`` on
``METRICS_PORT``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Optional

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from covidscan.settings import Settings
from db.models import PRIORITIES
from db.scans import queue_depth

log = logging.getLogger(__name__)

SCANS_RECOVERED = Counter(
    "covidscan_scans_recovered_total",
    "Scans whose worker's lease expired (the worker died), by what became of them: "
    "requeued, failed (attempts used up) or cancelled (their job was cancelled).",
    ["outcome"],
)
JOBS_FINISHED = Counter(
    "covidscan_jobs_finished_total",
    "Jobs that ended, by final status (succeeded, partially_succeeded, failed, cancelled), "
    "counted by the process whose write ended them.",
    ["status"],
)
JOBS_SUBMITTED = Counter(
    "covidscan_jobs_submitted_total", "Jobs accepted, by priority.", ["priority"]
)
SCANS_SUBMITTED = Counter(
    "covidscan_scans_submitted_total", "Scans accepted in jobs, by priority.", ["priority"]
)

EXPORTS = Counter(
    "covidscan_exports_total",
    "Attempts to deliver a result to a PACS destination, by outcome: stored (the PACS "
    "accepted it), committed (its Storage Commitment report confirmed it), retry (to be "
    "tried again) or failed (given up, with the destination's reason).",
    ["outcome"],
)


def count_export(outcome: str) -> None:
    """One export outcome recorded (``stored``, ``committed``, ``retry`` or ``failed``)."""
    EXPORTS.labels(outcome).inc()


RETRIEVAL_ITEMS = Counter(
    "covidscan_retrieval_items_total",
    "Items of retrievals from a PACS that ended, by outcome (retrieved, not_found, refused, "
    "failed), counted by the DICOM gateway that ran them.",
    ["outcome"],
)
INSTANCES_RETRIEVED = Counter(
    "covidscan_retrieved_instances_total",
    "Instances retrieved from a PACS and kept in jobs by the DICOM gateway.",
)


def retrieval_item_ended(outcome: str, instances: int) -> None:
    RETRIEVAL_ITEMS.labels(outcome).inc()
    if instances:
        INSTANCES_RETRIEVED.inc(instances)


def job_submitted(priority: str, scans: int) -> None:
    JOBS_SUBMITTED.labels(priority).inc()
    SCANS_SUBMITTED.labels(priority).inc(scans)


def scans_added(priority: str, scans: int) -> None:
    """Scans added to a job after its submission (a part, an append, a C-STORE instance)."""
    SCANS_SUBMITTED.labels(priority).inc(scans)


def count_recovered(requeued: int, failed: int, cancelled: int) -> None:
    for outcome, count in (("requeued", requeued), ("failed", failed), ("cancelled", cancelled)):
        if count:
            SCANS_RECOVERED.labels(outcome).inc(count)


def count_finished(statuses: Iterable[str]) -> None:
    for status in statuses:
        JOBS_FINISHED.labels(status).inc()


class QueueCollector(Collector):
    """The queue, from SQL, each time Prometheus scrapes (nothing to keep in step)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "covidscan_scans_waiting",
                "Scans queued and not yet leased by a worker, by job priority.",
                labels=["priority"],
            ),
            GaugeMetricFamily(
                "covidscan_scans_leased",
                "Scans leased by a worker right now (being classified).",
                labels=[],
            ),
            GaugeMetricFamily(
                "covidscan_oldest_waiting_scan_age_seconds",
                "How long the oldest waiting scan has waited (0: none waits).",
                labels=[],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        """The metric families, without values (no query)."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        try:
            with self.session_factory() as session:
                depth = queue_depth(session)
        except SQLAlchemyError as exc:  # the scrape still answers, without the queue
            log.warning("metrics: cannot read the queue: %s", exc.__class__.__name__)
            return
        waiting, leased, age = self._families()
        for rank, name in enumerate(PRIORITIES):
            waiting.add_metric([name], depth.waiting.get(rank, 0))
        leased.add_metric([], depth.leased)
        oldest = depth.oldest_waiting
        if oldest is None:
            age.add_metric([], 0.0)
        else:
            age.add_metric([], max(0.0, (datetime.now(UTC) - oldest).total_seconds()))
        yield from (waiting, leased, age)


class _Everything(Collector):
    """This process's own metrics (the default registry), inside a scrape registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def scrape_registry(settings: Settings, extra: Optional[Collector] = None) -> CollectorRegistry:
    """What ``/metrics`` shows: this process's metrics, or with PROMETHEUS_MULTIPROC_DIR the
    sum over every process writing there; plus ``extra`` (computed at scrape time)."""
    registry = CollectorRegistry(auto_describe=False)
    if settings.prometheus_multiproc_dir is not None:
        MultiProcessCollector(registry, str(settings.prometheus_multiproc_dir))
    else:
        registry.register(_Everything())
    if extra is not None:
        registry.register(extra)
    return registry


def serve(settings: Settings, what: str) -> Optional[int]:
    """Serve this process's metrics on METRICS_HOST:METRICS_PORT; returns the port, or None
    when METRICS_PORT is 0 (off)."""
    if not settings.metrics_port:
        return None
    server, _thread = start_http_server(
        settings.metrics_port, settings.metrics_host, registry=REGISTRY
    )
    port = server.server_port
    log.info("%s metrics on http://%s:%d/metrics", what, settings.metrics_host, port)
    return port
