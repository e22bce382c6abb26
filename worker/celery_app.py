"""The Celery application. Configured lazily from the environment on first use.

Run a worker with ``celery -A worker.celery_app worker --pool threads``: one model per
process, TensorFlow never initialised in a parent that forks, and WORKER_CONCURRENCY
task threads feeding one batcher.
"""

from __future__ import annotations

from celery import Celery

from covidscan.contract import INFER_QUEUE
from covidscan.settings import ConfigError, Settings, load_settings

app = Celery("covidscan", set_as_current=False)


def configure(celery: Celery, settings: Settings) -> None:
    """Apply the invariants: JSON only, late acks, wake-ups on one queue."""
    celery.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=INFER_QUEUE,
        # Task threads run drains; how many scans a worker leases at once is bounded apart
        # (worker.runtime), so prefetched wake-ups hold no scans.
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=settings.worker_prefetch,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        imports=("worker.tasks",),
    )


@app.on_configure.connect
def _configure_from_environment(sender: Celery, **_: object) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        # Celery logs and swallows Exceptions raised by signal handlers; a worker with a
        # wrong setting must not start on defaults, so leave through SystemExit.
        raise SystemExit(f"covidscan worker: {exc}") from None
    configure(sender, settings)
    from models.preprocess import configure_decoding

    configure_decoding(settings.max_scan_pixels)  # before anything in the worker imports cv2
