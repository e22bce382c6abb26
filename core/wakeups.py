"""Send wake-ups and webhook deliveries to Redis by task name (the API, the sweep and the
workers share this).

Never imports the worker: the task name in :mod:`covidscan.contract` is the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from celery import Celery

from covidscan.contract import DELIVER_TASK, INFER_QUEUE, WAKE_TASK


class WakeupSender:
    """Publishes :data:`covidscan.contract.WAKE_TASK` messages; raises on any Redis error."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._celery = Celery("covidscan-wakeups", broker=redis_url, set_as_current=False)
        self._celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            broker_connection_timeout=5,
            broker_connection_retry=False,
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.5,
            },
        )

    def __call__(self, tasks: int) -> None:
        with self._celery.producer_or_acquire() as producer:
            for _ in range(tasks):
                self._celery.send_task(WAKE_TASK, queue=INFER_QUEUE, producer=producer)

    def deliver(self, event_ids: Sequence[str], countdown: Optional[float] = None) -> None:
        """One :data:`covidscan.contract.DELIVER_TASK` per webhook event, after ``countdown`` s."""
        with self._celery.producer_or_acquire() as producer:
            for event_id in event_ids:
                self._celery.send_task(
                    DELIVER_TASK,
                    args=[event_id],
                    queue=INFER_QUEUE,
                    countdown=countdown,
                    producer=producer,
                )

    def close(self) -> None:
        self._celery.close()
