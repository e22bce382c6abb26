"""Liveness and readiness.

``/readyz`` is the API's own readiness (database, Redis and the blob store reachable); it
also counts the workers whose default model is warm, without failing when there are none,
so jobs can queue while workers start or scale up from zero.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.auth import ANY, public, requires
from api.extensions import db_session, services
from api.openapi import Reply, operation
from api.schemas import Health, Readiness, Version
from covidscan import __version__
from db.workers import live_workers

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
@operation("The process is alive", responses={200: Health})
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/v1/version")
@requires(ANY)
@operation("The version of covidscan this server runs", responses={200: Version})
def version() -> Response:
    return jsonify(version=__version__)


@bp.get("/readyz")
@public
@operation(
    "The database, Redis and the blob store answer",
    responses={200: Readiness, 503: Reply("Not ready: the checks say which failed", Readiness)},
)
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    try:
        db_session().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unreachable: {exc.__class__.__name__}: {exc}"
    try:
        client = redis.Redis.from_url(
            services().settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"unreachable: {exc}"
    checks["blob_store"] = services().blobs.problem() or "ok"
    ready = all(v == "ok" for v in checks.values())
    # Workers are counted, not required: jobs queue while workers scale up from zero.
    workers = (
        len([w for w in live_workers(db_session()) if w.ready])
        if checks["database"] == "ok"
        else None
    )
    return (
        jsonify(
            status="ready" if ready else "not ready", checks=checks, workers={"ready": workers}
        ),
        200 if ready else 503,
    )
