"""Celery tasks: thin wrappers that decode arguments and call plain functions."""
from __future__ import annotations

import logging

from celery import signals
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from covidscan.contract import INFER_TASK
from worker.celery_app import app
from worker.model_cache import classify_pinned
from worker.runtime import get_runtime, initialise

log = logging.getLogger(__name__)

FORKING_POOLS = ("prefork", "processes")


@app.task(bind=True, name=INFER_TASK, acks_late=True,
          autoretry_for=(OperationalError, RedisConnectionError),
          retry_backoff=True, retry_backoff_max=60, max_retries=8)
def infer_chunk(self, scan_ids: list[str]) -> dict[str, int]:
    if not isinstance(scan_ids, list) or not all(isinstance(i, str) for i in scan_ids):
        raise TypeError("infer_chunk takes a list of scan id strings")
    runtime = get_runtime()
    report = classify_pinned(runtime.session_factory, runtime.blobs, runtime.models, scan_ids,
                             runtime.decode_pool, worker=self.request.hostname)
    return {"claimed": report.claimed, "succeeded": report.succeeded, "failed": report.failed}


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
    try:
        initialise()
    except Exception as exc:
        # Celery swallows Exceptions from signal handlers; a worker without its model must stop.
        log.exception("cannot load the model")
        raise SystemExit(f"covidscan worker: cannot load the model: {exc}") from None


@signals.worker_process_init.connect
def _load_model_in_child(**_: object) -> None:
    initialise()
