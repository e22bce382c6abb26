"""Per-owner rate limits and quotas, counted in Redis so every API process shares them.

- ``RATE_LIMIT`` requests per owner (Flask-Limiter, moving window);
- ``SCANS_PER_HOUR`` scans submitted per owner (a sliding window charged with the number
  of scans of each accepted job, and one more for each explanation queued);
- ``MAX_ACTIVE_JOBS`` unfinished jobs per owner (counted in SQL, which holds the truth);
- ``FAILED_AUTH_LIMIT`` failed sign-ins per client address (a wrong, revoked or expired
  key or session): beyond it, the address is refused before its key is even looked up.

Each answers 429 problem+json with ``Retry-After``.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass

from flask import Flask, Response, g, request
from flask_limiter import Limiter, RequestLimit
from limits import RateLimitItemPerHour, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from redis import RedisError
from sqlalchemy.orm import Session

from api.extensions import db_session, services
from api.problems import Problem, problem_response
from db.jobs import active_job_count

log = logging.getLogger(__name__)
UNLIMITED_ENDPOINTS = frozenset({"static", "health.healthz", "health.readyz"})
ACTIVE_JOBS_RETRY_SECONDS = 30


def _limit_key() -> str:
    principal = g.get("principal")
    return f"owner:{principal.owner}" if principal is not None else f"ip:{request.remote_addr}"


def _retry_after(reset_at: float) -> int:
    return max(1, math.ceil(reset_at - time.time()))


def _too_many(detail: str, retry_after: int) -> Response:
    response = problem_response(429, detail, retry_after=retry_after)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _on_breach(limit: RequestLimit) -> Response:
    return _too_many(f"rate limit of {limit.limit} requests reached for this owner "
                     "(RATE_LIMIT); slow down", _retry_after(limit.reset_at))


@dataclass
class ScanQuota:
    """Scans per owner per hour, in Redis."""

    limiter: SlidingWindowCounterRateLimiter
    per_hour: int

    @property
    def item(self) -> RateLimitItemPerHour:
        return RateLimitItemPerHour(self.per_hour, namespace="covidscan-scans")

    def _refuse(self, owner: str, detail: str) -> Problem:
        stats = self.limiter.get_window_stats(self.item, owner)
        retry = _retry_after(stats.reset_time)
        return Problem(429, detail, retry_after=retry, headers={"Retry-After": str(retry)})

    def check_room(self, owner: str) -> None:
        """Refuse before reading an upload when the owner has no scans left this hour.

        Raises:
            Problem: 429 with Retry-After; 503 when Redis is unreachable.
        """
        try:
            if not self.limiter.test(self.item, owner):
                raise self._refuse(owner, f"the quota of {self.per_hour} scans per hour "
                                          "(SCANS_PER_HOUR) is used up for this owner")
        except (StorageError, RedisError, OSError) as exc:
            log.error("rate-limit storage unreachable: %s", exc)
            raise Problem(503, "Redis, which holds the quotas, is unreachable; nothing was "
                               "stored, try again") from None

    def charge(self, owner: str, scans: int, explanations: int = 0) -> None:
        """Count ``scans`` and ``explanations`` against the owner's hour, or refuse them all.

        An explanation (a Grad-CAM, which costs more than the scan's inference) counts as
        one scan.

        Raises:
            Problem: 429 with Retry-After when they do not fit; 503 when Redis is unreachable.
        """
        try:
            allowed = self.limiter.hit(self.item, owner, cost=scans + explanations)
        except (StorageError, RedisError, OSError) as exc:
            log.error("rate-limit storage unreachable: %s", exc)
            raise Problem(503, "Redis, which holds the quotas, is unreachable; nothing was "
                               "stored, try again") from None
        if not allowed:
            remaining = self.limiter.get_window_stats(self.item, owner).remaining
            if not scans:
                what = "this explanation exceeds" if explanations == 1 else \
                    f"these {explanations} explanations exceed"
            else:
                what = f"this job's {scans} scans" + (
                    f" and their {explanations} explanations" if explanations else "") + " exceed"
            raise self._refuse(owner, f"{what} the quota of {self.per_hour} scans per "
                                      "hour (SCANS_PER_HOUR; an explanation counts as a scan); "
                                      f"{remaining} are left this hour")


@dataclass
class FailedSignIns:
    """Failed authentications per client address, in Redis (every API process counts)."""

    limiter: MovingWindowRateLimiter
    limit: str

    @property
    def item(self):
        return parse(self.limit)

    def check(self, address: str) -> None:
        """Refuse an address that has failed too often, before its credentials are checked.

        Raises:
            Problem: 429 with Retry-After. Redis being away lets the request through.
        """
        if _is_loopback(address):
            return
        try:
            if self.limiter.test(self.item, address):
                return
            reset_at = self.limiter.get_window_stats(self.item, address).reset_time
        except (StorageError, RedisError) as exc:
            log.warning("failed sign-ins not counted, Redis is unreachable: %s", exc)
            return
        retry = _retry_after(reset_at)
        raise Problem(429, f"too many failed sign-ins from this address (FAILED_AUTH_LIMIT "
                           f"{self.limit}); wait and try again with a valid key",
                      retry_after=retry, headers={"Retry-After": str(retry)})

    def record(self, address: str) -> None:
        if _is_loopback(address):
            return
        try:
            self.limiter.hit(self.item, address)
        except (StorageError, RedisError) as exc:
            log.warning("failed sign-in not counted, Redis is unreachable: %s", exc)


def _is_loopback(address: str) -> bool:
    """Loopback callers are not counted: they are this host (``make run``'s CLI and page),
    or a proxy on it that PROXY_HOPS does not name, whose every client would be locked out."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def failed_sign_ins() -> FailedSignIns:
    return services().extras["failed_sign_ins"]


def check_active_jobs(owner: str) -> None:
    """Refuse a new job while the owner has ``MAX_ACTIVE_JOBS`` unfinished ones.

    A cheap check before anything is stored; :func:`confirm_active_jobs` settles races.

    Raises:
        Problem: 429 with Retry-After.
    """
    limit = services().settings.max_active_jobs
    if active_job_count(db_session(), owner) >= limit:
        raise _too_many_jobs(limit)


def confirm_active_jobs(session: Session, owner: str) -> None:
    """Inside the transaction that adds the owner's new job, after its insert: refuse it
    if, with the jobs other requests committed meanwhile, the owner is over the limit.

    Call :func:`db.jobs.lock_owner` first in the same transaction.

    Raises:
        Problem: 429 with Retry-After; the caller rolls back.
    """
    limit = services().settings.max_active_jobs
    if active_job_count(session, owner) > limit:
        raise _too_many_jobs(limit)


def _too_many_jobs(limit: int) -> Problem:
    retry = ACTIVE_JOBS_RETRY_SECONDS
    return Problem(429, f"this owner already has {limit} unfinished jobs (MAX_ACTIVE_JOBS); "
                        "wait until some finish", retry_after=retry,
                   headers={"Retry-After": str(retry)})


def storage_uri(redis_url: str) -> str:
    """REDIS_URL as the ``limits`` library names it (``unix://`` is ``redis+unix://`` there)."""
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def scan_quota() -> ScanQuota:
    return services().extras["scan_quota"]


def init_app(app: Flask) -> None:
    """Attach the rate limiter and the scan quota; call after :func:`api.auth.init_app`."""
    settings = app.extensions["covidscan"].settings
    limiter = Limiter(_limit_key, app=app, default_limits=[settings.rate_limit],
                      storage_uri=storage_uri(settings.redis_url), strategy="moving-window",
                      key_prefix="covidscan", swallow_errors=True, on_breach=_on_breach,
                      default_limits_exempt_when=lambda: request.endpoint in UNLIMITED_ENDPOINTS)
    storage = storage_from_string(storage_uri(settings.redis_url))
    app.extensions["covidscan"].extras["limiter"] = limiter
    app.extensions["covidscan"].extras["failed_sign_ins"] = FailedSignIns(
        MovingWindowRateLimiter(storage), settings.failed_auth_limit)
    app.extensions["covidscan"].extras["scan_quota"] = ScanQuota(
        SlidingWindowCounterRateLimiter(storage), settings.scans_per_hour)
