"""``GET /v1/jobs/<id>/exports``: each delivery of the job's results to a PACS destination;
``/v1/export-defaults``: where an owner's jobs are sent when they name no destination."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.audit import audit
from api.auth import current_principal, owned_job, requires
from api.extensions import db_session
from api.fields import validated
from api.job_intake import job_service
from api.openapi import operation
from api.schemas import ExportDefaults, ExportDefaultsRequest, ExportList
from api.serialize import iso
from covidscan.contract import ExportState
from db.destinations import owner_export_to, set_owner_export_to
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


@bp.get("/v1/export-defaults")
@requires("read")
@operation(
    "Where the caller's jobs are sent when they name no destination",
    responses={200: ExportDefaults},
)
def get_export_defaults() -> Response:
    """The registered destinations a job of the caller's owner is sent to when its
    submission has no ``export_to`` (C-STORE associations to a gateway whose owner this is
    included, unless the gateway names its own)."""
    return jsonify(export_to=owner_export_to(db_session(), current_principal().owner))


@bp.put("/v1/export-defaults")
@requires("submit")
@operation(
    "Set where the caller's jobs are sent when they name no destination",
    form=ExportDefaultsRequest,
    body=ExportDefaultsRequest,
    responses={200: ExportDefaults},
)
def set_export_defaults() -> Response:
    """Each name must be a registered destination (400 naming those that are not); an
    empty ``export_to`` clears the defaults. Jobs already submitted keep theirs."""
    fields = validated(ExportDefaultsRequest, request.get_json(silent=True) or request.form)
    session = db_session()
    names = job_service().resolve_destinations(session, fields.export_to)
    set_owner_export_to(session, current_principal().owner, names)
    audit("export_defaults.set", None, {"export_to": names}, commit=False)
    session.commit()
    return jsonify(export_to=names)
