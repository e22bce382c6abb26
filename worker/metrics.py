"""A worker's Prometheus metrics (served on METRICS_PORT by :func:`core.metrics.serve`).

Labels name the model (name and version) and the precision the engine runs at, and a
status; never a job or a scan. Scans are counted when their result is written (a
redelivered wake-up that writes nothing counts nothing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Optional

from prometheus_client import Counter, Gauge, Histogram

from covidscan.contract import ScanStatus

MODEL_LABELS = ["model", "version", "precision"]
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

SCANS_CLASSIFIED = Counter(
    "covidscan_scans_classified_total",
    "Scans whose result a worker wrote, by model, precision and status (succeeded, failed); "
    "its rate is the throughput in scans per second.",
    MODEL_LABELS + ["status"],
)
BATCH_SIZE = Histogram(
    "covidscan_batch_size",
    "Scans per model call.",
    MODEL_LABELS,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_FILL = Histogram(
    "covidscan_batch_fill_ratio",
    "Scans per model call divided by MAX_BATCH_SIZE (1: full).",
    MODEL_LABELS,
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
BATCH_FAILURES = Counter(
    "covidscan_batch_failures_total",
    "Model calls that raised (every scan in them failed).",
    MODEL_LABELS,
)
BATCH_WAIT = Histogram(
    "covidscan_batch_wait_seconds",
    "Time a decoded scan waited for its batch to run.",
    MODEL_LABELS,
    buckets=STAGE_BUCKETS,
)
INFERENCE = Histogram(
    "covidscan_inference_seconds",
    "Time of one model call (one batch), from its hand-over to the engine to its results.",
    MODEL_LABELS,
    buckets=STAGE_BUCKETS,
)
DECODE = Histogram(
    "covidscan_decode_seconds",
    "Time to read, decode and preprocess one scan.",
    buckets=STAGE_BUCKETS,
)
WRITE = Histogram(
    "covidscan_write_seconds",
    "Time of one transaction writing a claim's results.",
    buckets=STAGE_BUCKETS,
)
SCAN_LATENCY = Histogram(
    "covidscan_scan_latency_seconds",
    "End to end, per scan: from its job's submission to its result written.",
    MODEL_LABELS,
    buckets=LATENCY_BUCKETS,
)
MODEL_LOAD = Histogram(
    "covidscan_model_load_seconds",
    "Time to read and check a model file and load it.",
    ["model", "version"],
    buckets=LOAD_BUCKETS,
)
ENGINE_BUILD = Histogram(
    "covidscan_engine_build_seconds",
    "Time to build a warm engine of a loaded model for a precision (convert, quantize, "
    "gate, compile, warm up; a cached conversion is faster).",
    MODEL_LABELS,
    buckets=LOAD_BUCKETS,
)
LEASES_HELD = Gauge(
    "covidscan_worker_leases_held", "Scans this worker holds a lease on (at its last heartbeat)."
)


def engine_labels(engine: Any) -> tuple[str, str, str]:
    """Model name, version and the precision it runs at, for a warm engine."""
    return engine.info.name, engine.info.version, engine.precision


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(*labels) if labels else histogram).observe(time.perf_counter() - started)


class BatchObserver:
    """The batcher's ``on_batch``: size, fill, waits and time of each model call."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size

    def __call__(self, engine: Any, waits: Sequence[float], seconds: float, failed: bool) -> None:
        labels = engine_labels(engine)
        BATCH_SIZE.labels(*labels).observe(len(waits))
        BATCH_FILL.labels(*labels).observe(len(waits) / self.max_batch_size)
        INFERENCE.labels(*labels).observe(seconds)
        wait = BATCH_WAIT.labels(*labels)
        for waited in waits:
            wait.observe(waited)
        if failed:
            BATCH_FAILURES.labels(*labels).inc()


def scans_written(
    identity: Any, written: Sequence[tuple[Any, Any]], now: Optional[datetime] = None
) -> None:
    """Count written outcomes (pairs of ScanOutcome, Lease) and their end-to-end latency."""
    now = now or datetime.now(UTC)
    labels = (identity.name, identity.version, identity.precision)
    latency = SCAN_LATENCY.labels(*labels)
    for outcome, lease in written:
        SCANS_CLASSIFIED.labels(
            *labels, ScanStatus.FAILED if outcome.error else ScanStatus.SUCCEEDED
        ).inc()
        queued = lease.queued_at
        if queued is not None:
            latency.observe(max(0.0, (now - queued).total_seconds()))


def model_loaded(model: Any, seconds: float) -> None:
    """Record a model load (``model.info`` names it; a stand-in without one is skipped)."""
    info = getattr(model, "info", None)
    if info is not None:
        MODEL_LOAD.labels(info.name, info.version).observe(seconds)
