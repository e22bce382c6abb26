"""Dynamic batching: items from many tasks, merged into model batches per key.

Task threads :meth:`DynamicBatcher.submit` one item at a time and get a future. An
inference thread takes up to ``max_batch_size`` items of one key (one engine: a batch
never mixes models or precisions) as soon as that many are waiting, or when the oldest
waiting item has waited ``max_delay_s``, whichever comes first, and resolves each
item's future with its own result or error. Items of a key are batched in the order
they were submitted; a large lease of scans simply spans several batches.

With ``concurrency`` above 1, an engine that declares ``concurrent_batches`` (OpenVINO:
2) gets its next full batch while the last one still runs, so it never waits for the
batcher between batches. A partial batch still goes only when nothing of its key runs:
waiting behind a running batch, it may yet fill.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]
"""Runs one batch of one key: returns one result, or one exception instance, per item, in order."""
OnBatch = Callable[[Hashable, list[float], float, bool], None]
"""Told of each batch run: its key, each item's wait in seconds, the run's seconds, whether it
failed."""


class BatchSizeMismatch(RuntimeError):
    """A batch function returned a different number of results than it was given items."""


@dataclass
class _Pending:
    item: Any
    future: Future
    enqueued: float


@dataclass
class BatchStats:
    """Counters of the batches run so far (read with :meth:`DynamicBatcher.snapshot`)."""

    batches: int = 0
    items: int = 0
    failed_batches: int = 0
    busy_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self, max_batch_size: int) -> dict[str, Any]:
        mean = self.items / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "items": self.items,
            "failed_batches": self.failed_batches,
            "busy_seconds": round(self.busy_seconds, 6),
            "mean_batch_size": mean,
            "mean_fill": mean / max_batch_size,
            "max_batch_size": max_batch_size,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class DynamicBatcher:
    """Merges submitted items into batches of one key; flushes on size or deadline."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        max_delay_s: float,
        name: str = "batcher",
        on_batch: Optional[OnBatch] = None,
        concurrency: int = 1,
    ) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a whole number ≥ 1, got {max_batch_size!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number ≥ 1, got {concurrency!r}")
        if not max_delay_s >= 0:
            raise ValueError(f"max_delay_s must be ≥ 0, got {max_delay_s!r}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = float(max_delay_s)
        self.name = name
        self.on_batch = on_batch
        self.concurrency = concurrency
        self._queues: dict[Hashable, deque[_Pending]] = {}
        self._running: dict[Hashable, int] = {}  # batches of each key being run
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._stats = BatchStats()
        self._busy_since: Optional[float] = None  # while any batch runs

    def start(self) -> DynamicBatcher:
        with self._cond:
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._loop, name=f"{self.name}-{i}", daemon=True)
                    for i in range(self.concurrency)
                ]
                for thread in self._threads:
                    thread.start()
        return self

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue ``item`` for a batch of ``key``; the future resolves to its result."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"{self.name} is stopped")
            queue = self._queues.setdefault(key, deque())
            queue.append(_Pending(item, future, time.monotonic()))
            if len(queue) == 1 or len(queue) >= self.max_batch_size:
                self._cond.notify_all()
        return future

    def stop(self, timeout: Optional[float] = None) -> None:
        """Run what is queued, then end the inference thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def snapshot(self) -> dict[str, Any]:
        """The counters so far, as plain JSON-able values."""
        with self._cond:
            stats = self._stats.as_dict(self.max_batch_size)
            if self._busy_since is not None:  # busy time counts as it passes
                stats["busy_seconds"] = round(
                    self._stats.busy_seconds + time.monotonic() - self._busy_since, 6
                )
            return stats

    def _limit(self, key: Hashable) -> int:
        return min(self.concurrency, max(1, int(getattr(key, "concurrent_batches", 1))))

    def _take(self, key: Hashable) -> tuple[Hashable, list[_Pending]]:
        queue = self._queues[key]
        batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch_size))]
        if not queue:
            del self._queues[key]
        self._running[key] = self._running.get(key, 0) + 1
        if self._busy_since is None:
            self._busy_since = time.monotonic()
        return key, batch

    def _done(self, key: Hashable) -> None:
        """Called under the lock when a batch of ``key`` has run."""
        self._running[key] -= 1
        if not self._running[key]:
            del self._running[key]
        if not self._running and self._busy_since is not None:
            self._stats.busy_seconds += time.monotonic() - self._busy_since
            self._busy_since = None
        self._cond.notify_all()

    def _next_batch(self) -> Optional[tuple[Hashable, list[_Pending]]]:
        """Block until a batch is due; None once stopping with nothing left."""
        with self._cond:
            while True:
                if not self._queues:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                # Keys with nothing running go by size or deadline; a key with a batch
                # running, only with a full batch and while it is under its limit.
                idle = []
                for key, queue in self._queues.items():
                    running = self._running.get(key, 0)
                    if running >= self._limit(key):
                        continue
                    if len(queue) >= self.max_batch_size:
                        return self._take(key)
                    if not running:
                        idle.append(key)
                if not idle:
                    self._cond.wait()
                    continue
                key = min(idle, key=lambda k: self._queues[k][0].enqueued)
                wait = self._queues[key][0].enqueued + self.max_delay_s - time.monotonic()
                if wait <= 0 or self._stopping:
                    return self._take(key)
                self._cond.wait(wait)

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._execute(*batch)

    def _execute(self, key: Hashable, pending: list[_Pending]) -> None:
        started_at = time.monotonic()
        started = time.perf_counter()
        try:
            results = list(self.run_batch(key, [p.item for p in pending]))
            if len(results) != len(pending):
                raise BatchSizeMismatch(
                    f"the batch function returned {len(results)} results for {len(pending)} items"
                )
        except Exception as exc:  # the batch failed as a whole: every item gets the error
            log.exception("%s: a batch of %d items failed", self.name, len(pending))
            results = [exc] * len(pending)
            failed = True
        else:
            failed = False
        elapsed = time.perf_counter() - started
        with self._cond:
            stats = self._stats
            stats.batches += 1
            stats.items += len(pending)
            stats.failed_batches += failed
            stats.sizes[len(pending)] = stats.sizes.get(len(pending), 0) + 1
            self._done(key)
        log.debug("%s: batch of %d in %.3f s", self.name, len(pending), elapsed)
        if self.on_batch is not None:
            try:
                self.on_batch(key, [started_at - p.enqueued for p in pending], elapsed, failed)
            except Exception:
                log.exception("%s: on_batch failed", self.name)
        for entry, result in zip(pending, results):
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)
