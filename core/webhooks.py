"""Deliver job events: sign per Standard Webhooks, POST, record, retry with backoff.

One attempt (:func:`deliver_event`) claims the event in SQL, checks the destination again
(:mod:`core.webhook_targets`), POSTs the JSON body signed with ``standardwebhooks``
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), follows no redirect, and
records what happened. A 2xx delivers; 410 stops for good; anything else (a timeout, a
refused destination, a 5xx, a 429…) is tried again after :func:`retry_delay`, or later when
the receiver's ``Retry-After`` asks for more, until ``WEBHOOK_RETRY_WINDOW`` after the event
was made. The worker's Celery task calls it; the sweep re-sends what no queue holds.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Optional

import urllib3
from sqlalchemy.orm import Session, sessionmaker

from core.webhook_targets import Destination, RefusedDestination, check
from covidscan.settings import Settings
from db.models import WebhookEvent, utcnow
from db.session import in_transaction
from db.webhooks import (
    DELIVERED,
    FAILED,
    GONE,
    RETRY,
    Attempt,
    claim_event,
    due_event_ids,
    endpoint_secret,
    mark_queued,
    record_attempt,
)

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 6 * 3600.0
"""No wait between two attempts is longer (nor a receiver's Retry-After honoured beyond it)."""
JITTER = (0.75, 1.0)
"""Each wait is the exponential delay times a random factor in this range: waits spread
out, and each is still longer than the one before."""
REQUEUE_AFTER = 300.0
"""An event sent to the queue and still due this long after is sent again (a lost message)."""
SHORT_RETRY = 300.0
"""Retries due sooner than this go to the queue with a countdown; later ones wait for a sweep."""
COUNTDOWN_MARGIN = 0.2
"""Seconds added to a retry's countdown so that its message does not arrive before it is due."""
USER_AGENT = "covidscan-webhooks/1"

SendDeliveries = Callable[[Sequence[str], Optional[float]], None]
"""Sends one delivery task per event id (with a countdown in seconds, or None); raises."""


def retry_delay(
    failures: int, base_seconds: float, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: base × 2^(failures−1), capped
    at :data:`MAX_RETRY_DELAY`, times a jitter factor in :data:`JITTER`."""
    low, high = JITTER
    exponential = min(base_seconds * 2 ** min(failures - 1, 40), MAX_RETRY_DELAY)
    return exponential * (low + (high - low) * rng())


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_DELAY)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or utcnow())).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_DELAY)


def next_attempt(
    created_at: datetime,
    failures: int,
    now: datetime,
    window_seconds: float,
    base_seconds: float,
    retry_after: Optional[float] = None,
    rng: Callable[[], float] = random.random,
) -> Optional[datetime]:
    """When to try again after ``failures`` failed attempts, or None: retries have run out.

    Retries go on until ``window_seconds`` after ``created_at`` (``WEBHOOK_RETRY_WINDOW``,
    ``EXPORT_RETRY_WINDOW``), the last one at that moment at the latest, waiting
    :func:`retry_delay` from ``base_seconds``; never sooner than a receiver's
    ``Retry-After`` asked.
    """
    deadline = created_at + timedelta(seconds=window_seconds)
    if now >= deadline:
        return None
    delay = retry_delay(failures, base_seconds, rng)
    at = min(now + timedelta(seconds=delay), deadline)
    if retry_after is not None:
        at = max(at, now + timedelta(seconds=retry_after))
    return at


def body_bytes(event: WebhookEvent) -> bytes:
    """The exact bytes signed and sent, the same for every attempt."""
    return json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(
    secret: str, event_id: str, body: bytes, now: Optional[datetime] = None
) -> dict[str, str]:
    """Standard Webhooks headers, signed with ``standardwebhooks``."""
    from standardwebhooks import Webhook

    moment = (now or utcnow()).astimezone(UTC)
    signature = Webhook(secret).sign(event_id, moment, body.decode())
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def post(destination: Destination, body: bytes, headers: dict[str, str], timeout: float) -> Attempt:
    """POST to the checked address (TLS names the host), no redirects, bounded waits.

    ``timeout`` bounds the connect and each read of the status line and headers.
    """
    started = time.monotonic()
    options: dict[str, Any] = dict(
        timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False, maxsize=1
    )
    if destination.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            destination.address,
            destination.port,
            server_hostname=destination.host,
            assert_hostname=destination.host,
            cert_reqs="CERT_REQUIRED",
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(destination.address, destination.port, **options)
    try:
        response = pool.urlopen(
            "POST",
            destination.target,
            body=body,
            headers={**headers, "host": destination.host_header},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        status = response.status
        response.close()  # the body is never read: a receiver cannot hold the worker with it
        error = None if 200 <= status < 300 else f"HTTP {status}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    except urllib3.exceptions.HTTPError as exc:
        status, error, retry_after = None, f"{type(exc).__name__}: {exc}", None
    finally:
        pool.close()
    return Attempt(status, error, int((time.monotonic() - started) * 1000), retry_after)


def attempt_once(event: WebhookEvent, secret: Optional[str], settings: Settings) -> Attempt:
    """Check the destination again, sign and POST; an Attempt whatever happens."""
    if secret is None:
        return Attempt(None, "no signing secret: set WEBHOOK_SECRET on the workers", 0)
    try:
        destination = check(event.url, settings.webhook_allowed_hosts)
    except RefusedDestination as exc:
        return Attempt(None, f"refused: {exc}", 0)
    body = body_bytes(event)
    return post(destination, body, signed_headers(secret, event.id, body), settings.webhook_timeout)


def deliver_event(
    session_factory: sessionmaker[Session],
    settings: Settings,
    event_id: str,
    send: Optional[SendDeliveries] = None,
) -> Optional[str]:
    """One attempt at ``event_id`` if it is due and free; returns its outcome, or None.

    A retry due within :data:`SHORT_RETRY` is sent back to the queue through ``send``
    with a countdown; a later one waits in SQL for a sweep.
    """
    lease = 3 * settings.webhook_timeout + 30
    with session_factory.begin() as session:
        event = claim_event(session, event_id, lease)
        if event is None:
            return None
        secret = endpoint_secret(session, event.owner, event.url) or settings.webhook_secret
        session.expunge(event)
    attempt = attempt_once(event, secret, settings)
    now = utcnow()
    when = None
    if attempt.delivered:
        outcome = DELIVERED
    elif attempt.status_code == 410:
        outcome = GONE
    else:
        when = next_attempt(
            event.created_at,
            event.attempts,
            now,
            settings.webhook_retry_window,
            settings.webhook_retry_base_ms / 1000,
            attempt.retry_after,
        )
        outcome = RETRY if when is not None else FAILED
    # The POST is made: its record must not be lost to a deadlock.
    recorded = in_transaction(
        session_factory, lambda session: record_attempt(session, event, attempt, outcome, when, now)
    )
    log.info(
        "webhook %s of job %s, attempt %d: %s (%s)",
        event.id,
        event.job_id,
        event.attempts,
        outcome,
        attempt.status_code or attempt.error,
    )
    delay = (when - now).total_seconds() if when is not None else None
    if recorded and send is not None and delay is not None and delay <= SHORT_RETRY:
        try:
            send([event.id], max(delay, 0.0) + COUNTDOWN_MARGIN)
            with session_factory.begin() as session:
                mark_queued(session, [event.id])
        except Exception as exc:
            log.warning("retry of webhook %s not queued (the sweep will): %s", event.id, exc)
    return outcome if recorded else None


def relay_events(
    session_factory: sessionmaker[Session], send: SendDeliveries, limit: int = 100
) -> int:
    """Send a delivery task for each due event no queue holds; returns how many were sent."""
    with session_factory.begin() as session:  # the events stay locked until marked queued
        ids = due_event_ids(session, REQUEUE_AFTER, limit)
        if not ids:
            return 0
        try:
            send(ids, None)
        except Exception as exc:
            log.warning(
                "webhook deliveries not queued, kept for the next relay: %s: %s",
                type(exc).__name__,
                exc,
            )
            return 0
        mark_queued(session, ids)
    return len(ids)
