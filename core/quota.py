"""The owner's limits on work, whatever the way in: scans per hour (in Redis, shared by
every process that takes jobs) and unfinished jobs (in SQL, which holds the truth).

- ``SCANS_PER_HOUR`` scans submitted per owner: a sliding window charged with the number of
  scans of each accepted job or part, and one more for each explanation queued;
- ``MAX_ACTIVE_JOBS`` unfinished jobs per owner: checked cheaply before anything is stored,
  and again after the write, under the owner's lock (:func:`db.jobs.lock_owner`).

Refusals are :class:`core.errors.OverQuota` (with the seconds to wait) or
:class:`core.errors.Unavailable` when Redis does not answer.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerHour
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from redis import RedisError
from sqlalchemy.orm import Session

from core.errors import OverQuota, Unavailable
from db.jobs import active_job_count

log = logging.getLogger(__name__)
ACTIVE_JOBS_RETRY_SECONDS = 30


def storage_uri(redis_url: str) -> str:
    """REDIS_URL as the ``limits`` library names it (``unix://`` is ``redis+unix://`` there)."""
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def retry_after(reset_at: float) -> int:
    """Whole seconds from now until ``reset_at`` (a Unix time), at least 1."""
    return max(1, math.ceil(reset_at - time.time()))


def _unreachable(exc: Exception) -> Unavailable:
    log.error("rate-limit storage unreachable: %s", exc)
    return Unavailable(
        "Redis, which holds the quotas, is unreachable; nothing was stored, try again"
    )


@dataclass
class ScanQuota:
    """Scans per owner per hour, in Redis."""

    limiter: SlidingWindowCounterRateLimiter
    per_hour: int

    @classmethod
    def open(cls, redis_url: str, per_hour: int) -> ScanQuota:
        """The quota kept in the Redis at ``redis_url`` (no connection until first used)."""
        return cls(
            SlidingWindowCounterRateLimiter(storage_from_string(storage_uri(redis_url))), per_hour
        )

    @property
    def item(self) -> RateLimitItemPerHour:
        return RateLimitItemPerHour(self.per_hour, namespace="covidscan-scans")

    def _refuse(self, owner: str, detail: str) -> OverQuota:
        stats = self.limiter.get_window_stats(self.item, owner)
        return OverQuota(detail, retry_after(stats.reset_time))

    def check_room(self, owner: str) -> None:
        """Refuse before reading an upload when the owner has no scans left this hour.

        Raises:
            OverQuota: with the seconds to wait. Unavailable: Redis is unreachable.
        """
        try:
            if not self.limiter.test(self.item, owner):
                raise self._refuse(
                    owner,
                    f"the quota of {self.per_hour} scans per hour "
                    "(SCANS_PER_HOUR) is used up for this owner",
                )
        except (StorageError, RedisError, OSError) as exc:
            raise _unreachable(exc) from None

    def charge(self, owner: str, scans: int, explanations: int = 0) -> None:
        """Count ``scans`` and ``explanations`` against the owner's hour, or refuse them all.

        An explanation (a Grad-CAM, which costs more than the scan's inference) counts as
        one scan.

        Raises:
            OverQuota: they do not fit. Unavailable: Redis is unreachable.
        """
        try:
            allowed = self.limiter.hit(self.item, owner, cost=scans + explanations)
            if allowed:
                return
            remaining = self.limiter.get_window_stats(self.item, owner).remaining
        except (StorageError, RedisError, OSError) as exc:
            raise _unreachable(exc) from None
        if not scans:
            what = (
                "this explanation exceeds"
                if explanations == 1
                else f"these {explanations} explanations exceed"
            )
        else:
            what = (
                f"these {scans} scans"
                + (f" and their {explanations} explanations" if explanations else "")
                + " exceed"
            )
        raise self._refuse(
            owner,
            f"{what} the quota of {self.per_hour} scans per hour "
            "(SCANS_PER_HOUR; an explanation counts as a scan); "
            f"{remaining} are left this hour",
        )


def check_active_jobs(session: Session, owner: str, limit: int) -> None:
    """Refuse a new job while the owner has ``limit`` unfinished ones (MAX_ACTIVE_JOBS).

    A cheap check before anything is stored; :func:`confirm_active_jobs` settles races.

    Raises:
        OverQuota: with the seconds to wait.
    """
    if active_job_count(session, owner) >= limit:
        raise _too_many_jobs(limit)


def confirm_active_jobs(session: Session, owner: str, limit: int) -> None:
    """Inside the transaction that adds the owner's scans, after their insert: refuse them
    if, with what other requests committed meanwhile, the owner has more than ``limit``
    unfinished jobs. Call :func:`db.jobs.lock_owner` first in the same transaction.

    Raises:
        OverQuota: the caller rolls back.
    """
    if active_job_count(session, owner) > limit:
        raise _too_many_jobs(limit)


def _too_many_jobs(limit: int) -> OverQuota:
    return OverQuota(
        f"this owner already has {limit} unfinished jobs (MAX_ACTIVE_JOBS); wait until some finish",
        ACTIVE_JOBS_RETRY_SECONDS,
    )
