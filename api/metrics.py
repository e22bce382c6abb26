"""``/metrics``: the API's Prometheus metrics, and the queue read from SQL at scrape time.

Who may read it is METRICS_ACCESS: ``key`` (the default) asks for an API key with the
``metrics`` (or ``admin``) scope, like every other route; ``public`` lets anyone read it,
for a Prometheus that scrapes the API on an internal network (docker compose does, and its
nginx front refuses ``/metrics`` from outside). The numbers hold no patient data: counts
and timings with bounded labels (route, method, status, priority).
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Histogram
from prometheus_client.exposition import choose_encoder

from api.auth import public, requires
from api.extensions import services
from api.openapi import Reply, operation
from core.metrics import QueueCollector, scrape_registry

METRICS_SCOPE = "metrics"
UNMATCHED_ROUTE = "<unmatched>"

HTTP_DURATION = Histogram(
    "covidscan_http_request_duration_seconds",
    "Time the API took to answer, by route (the URL rule, not the path), method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        HTTP_DURATION.labels(route, request.method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    return response


def _metrics_page() -> Response:
    svc = services()
    registry = scrape_registry(svc.settings, QueueCollector(svc.session_factory))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # as Prometheus asks
    return Response(
        encode(registry),
        mimetype=None,
        headers={"Content-Type": content_type, "Cache-Control": "no-store"},
    )


def init_app(app: Flask) -> None:
    """Time every request (call before any other ``before_request`` user, so refusals by
    the host check or the authentication are timed too) and add ``/metrics``."""
    app.before_request(_start_timer)
    app.after_request(_observe)
    access = app.extensions["covidscan"].settings.metrics_access

    def metrics() -> Response:
        return _metrics_page()

    view = public(metrics) if access == "public" else requires(METRICS_SCOPE)(metrics)
    text = {"schema": {"type": "string"}}
    view = operation(
        "Prometheus metrics (outside /v1)",
        responses={
            200: Reply(
                "The metrics in Prometheus' text format (OpenMetrics when the Accept header asks)",
                media={"text/plain": text, "application/openmetrics-text": text},
            )
        },
    )(view)
    app.add_url_rule("/metrics", "metrics", view, methods=["GET"])
