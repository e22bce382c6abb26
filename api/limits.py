"""Per-owner rate limits and quotas, counted in Redis so every API process shares them.

- ``RATE_LIMIT`` requests per owner (Flask-Limiter, moving window);
- ``SCANS_PER_HOUR`` and ``MAX_ACTIVE_JOBS``: the owner's limits on work, the same on every
  way in (:mod:`core.quota`, applied by the job service); made here from the settings;
- ``FAILED_AUTH_LIMIT`` failed sign-ins per client address (a wrong, revoked or expired
  key or session): beyond it, the address is refused before its key is even looked up.

Each answers 429 problem+json with ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from flask import Flask, Response, g, request
from flask_limiter import Limiter, RequestLimit
from limits import parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from redis import RedisError

from api.extensions import services
from api.problems import Problem, problem_response
from core.quota import ScanQuota, retry_after, storage_uri

log = logging.getLogger(__name__)
UNLIMITED_ENDPOINTS = frozenset({"static", "health.healthz", "health.readyz"})


def _limit_key() -> str:
    principal = g.get("principal")
    return f"owner:{principal.owner}" if principal is not None else f"ip:{request.remote_addr}"


def _too_many(detail: str, retry_after: int) -> Response:
    response = problem_response(429, detail, retry_after=retry_after)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _on_breach(limit: RequestLimit) -> Response:
    return _too_many(
        f"rate limit of {limit.limit} requests reached for this owner (RATE_LIMIT); slow down",
        retry_after(limit.reset_at),
    )


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
        retry = retry_after(reset_at)
        raise Problem(
            429,
            f"too many failed sign-ins from this address (FAILED_AUTH_LIMIT "
            f"{self.limit}); wait and try again with a valid key",
            retry_after=retry,
            headers={"Retry-After": str(retry)},
        )

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


def scan_quota() -> ScanQuota:
    """The hourly scan quota (:mod:`core.quota`), shared with the job service."""
    return services().extras["scan_quota"]


def init_app(app: Flask) -> None:
    """Attach the rate limiter and the scan quota; call after :func:`api.auth.init_app`."""
    settings = app.extensions["covidscan"].settings
    limiter = Limiter(
        _limit_key,
        app=app,
        default_limits=[settings.rate_limit],
        storage_uri=storage_uri(settings.redis_url),
        strategy="moving-window",
        key_prefix="covidscan",
        swallow_errors=True,
        on_breach=_on_breach,
        default_limits_exempt_when=lambda: request.endpoint in UNLIMITED_ENDPOINTS,
    )
    storage = storage_from_string(storage_uri(settings.redis_url))
    app.extensions["covidscan"].extras["limiter"] = limiter
    app.extensions["covidscan"].extras["failed_sign_ins"] = FailedSignIns(
        MovingWindowRateLimiter(storage), settings.failed_auth_limit
    )
    app.extensions["covidscan"].extras["scan_quota"] = ScanQuota(
        SlidingWindowCounterRateLimiter(storage), settings.scans_per_hour
    )
