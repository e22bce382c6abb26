"""Liveness and readiness."""
from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.auth import public
from api.extensions import db_session, services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
@public
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    try:
        db_session().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unreachable: {exc.__class__.__name__}: {exc}"
    try:
        client = redis.Redis.from_url(services().settings.redis_url, socket_timeout=2,
                                      socket_connect_timeout=2)
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"unreachable: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503
