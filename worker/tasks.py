"""Celery tasks: thin wrappers that decode arguments and call plain functions."""

from __future__ import annotations

import logging
from typing import Optional

from celery import signals
from celery.worker.control import inspect_command
from sqlalchemy.exc import OperationalError

from core import metrics
from core.webhooks import deliver_event
from covidscan.contract import BATCHING_STATS_COMMAND, DELIVER_TASK, WAKE_TASK
from covidscan.settings import load_settings
from worker.celery_app import app
from worker.drain import drain
from worker.runtime import current_runtime, get_runtime, initialise

log = logging.getLogger(__name__)

FORKING_POOLS = ("prefork", "processes")


@app.task(
    bind=True,
    name=WAKE_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=8,
)
def wake(self) -> dict[str, int]:
    """Classify waiting scans until none is left (see :mod:`worker.drain`)."""
    report = drain(get_runtime(), worker=self.request.hostname)
    return {
        "claimed": report.claimed,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "explained": report.explained,
    }


@app.task(
    name=DELIVER_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=8,
)
def deliver_webhook(event_id: str) -> Optional[str]:
    """One attempt to deliver a job's webhook event (see :mod:`core.webhooks`)."""
    runtime = get_runtime()
    return deliver_event(
        runtime.session_factory, runtime.settings, event_id, runtime.send_wakeups.deliver
    )


@inspect_command(name=BATCHING_STATS_COMMAND)
def batching_stats(state) -> dict:
    """The batcher's counters (batches, items, sizes, busy time), for the benchmark and tests."""
    current = current_runtime()
    return current.batcher.snapshot() if current is not None else {}


def _pool_name(worker) -> str:
    pool_cls = getattr(worker, "pool_cls", "")
    name = pool_cls if isinstance(pool_cls, str) else f"{pool_cls.__module__}.{pool_cls.__name__}"
    return name.lower()


@signals.worker_init.connect
def _load_model_before_consuming(sender=None, **_: object) -> None:
    """Warm the model before the worker takes work, unless the pool forks after this point."""
    if any(p in _pool_name(sender) for p in FORKING_POOLS):
        log.info("prefork pool: each child loads the model after the fork")
        return
    try:  # first: a worker warming its model (minutes, the first time) is already watched
        metrics.serve(load_settings(), "worker")
    except OSError as exc:
        raise SystemExit(f"covidscan worker: cannot serve metrics on METRICS_PORT: {exc}") from None
    try:
        initialise(node=getattr(sender, "hostname", None))
    except Exception as exc:
        # Celery swallows Exceptions from signal handlers; a worker without its model must stop.
        log.exception("cannot load the model")
        raise SystemExit(f"covidscan worker: cannot load the model: {exc}") from None


@signals.worker_ready.connect
def _announce_ready(sender=None, **_: object) -> None:
    """The default model is warm (loaded in worker_init): count this worker as ready."""
    current = current_runtime()
    if current is None:  # prefork: the children hold the models, each loads its own
        log.info("no model in this process; readiness is not announced")
        return
    current.announce(sender.hostname)


@signals.worker_process_init.connect
def _load_model_in_child(**_: object) -> None:
    initialise()


@signals.worker_shutting_down.connect
def _stop_taking_work(**_: object) -> None:
    """SIGTERM: finish the batch in hand, claim nothing more."""
    current = current_runtime()
    if current is not None:
        current.stop_taking_work()


@signals.worker_shutdown.connect
def _release_runtime(**_: object) -> None:
    """After a warm shutdown: give back leases still held, stop the loops, close connections."""
    current = current_runtime()
    if current is not None:
        current.close()
