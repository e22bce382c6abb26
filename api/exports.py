"""``GET /v1/jobs/<id>/exports``: each delivery of the job's results to a PACS destination."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api.auth import owned_job, requires
from api.extensions import db_session
from api.openapi import operation
from api.schemas import ExportList
from api.serialize import iso
from covidscan.contract import ExportState
from db.exports import job_exports
from db.models import Export

bp = Blueprint("exports", __name__)


def export_json(row: Export) -> dict[str, Any]:
    return {
        "id": row.id,
        "destination": row.destination,
        "kind": row.kind,
        "study_uid": row.study_uid,
        "series_uid": row.series_uid,
        "results_series_uid": row.results_series_uid,
        "sop_instance_uid": row.sop_instance_uid,
        "state": row.state,
        "attempts": row.attempts,
        "error": row.error,
        "created_at": iso(row.created_at),
        "next_attempt_at": iso(row.next_attempt_at) if row.state == ExportState.PENDING else None,
        "stored_at": iso(row.stored_at),
        "committed_at": iso(row.committed_at),
        "finished_at": iso(row.finished_at),
    }


@bp.get("/v1/jobs/<job_id>/exports")
@requires("read")
@operation("A job's deliveries to PACS destinations", responses={200: ExportList}, errors=(404,))
def list_exports(job_id: str) -> Response:
    """One entry per series result and destination the job names (``export_to``), made
    when the job ends: its state (``pending``, ``stored``, ``committed``, ``failed``), the
    attempts made and the destination's last reason. UIDs only: no patient attribute."""
    job = owned_job(job_id)
    return jsonify(exports=[export_json(row) for row in job_exports(db_session(), job.id)])
