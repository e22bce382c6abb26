"""``/v1/workers``: the live workers, and which engine serves each model on each of them."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import ANY, requires
from api.extensions import db_session
from api.openapi import operation
from api.schemas import WorkerList
from api.serialize import iso
from db.workers import live_workers

bp = Blueprint("workers", __name__, url_prefix="/v1/workers")


@bp.get("")
@requires(ANY)
@operation("The live workers and what serves on each", responses={200: WorkerList})
def list_workers() -> Response:
    """Per worker: ready or not, its heartbeat, and per warm model the engine, precision,
    accuracy gate and measured images/s for each precision asked of it so far."""
    return jsonify(
        workers=[
            {
                "name": w.name,
                "ready": w.ready,
                "started_at": iso(w.started_at),
                "heartbeat_at": iso(w.heartbeat_at),
                "models": w.engines,
            }
            for w in live_workers(db_session())
        ]
    )
