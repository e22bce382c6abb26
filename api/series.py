"""``GET /v1/jobs/<id>/series``: a job's DICOM series, each with its P(COVID) and its slices."""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from api.audit import audit
from api.auth import owned_job, requires
from api.extensions import db_session, services
from api.fields import validated
from api.openapi import Reply, operation
from api.schemas import SeriesList, SeriesQuery, SeriesReportPath
from core.reports.series import checked_series_uid, class_names, series_document
from db.series import job_series, min_series_slices

bp = Blueprint("series", __name__, url_prefix="/v1/jobs")

UNSAFE_IN_FILENAME = re.compile(r"[^0-9A-Za-z.-]")


@bp.get("/<job_id>/series")
@requires("read")
@operation(
    "A job's DICOM series and their P(COVID)",
    query=SeriesQuery,
    responses={200: SeriesList},
    errors=(404,),
)
def list_series(job_id: str) -> Response:
    """Each DICOM series of the job: UIDs, modality, counts, P(COVID), label and the rule.

    A series of fewer slices than the job's ``min_series_slices`` has no P(COVID) nor
    label; ``skipped`` says why.

    ``?slices=true`` adds the slices in order along the patient axis with their probabilities.
    PNG and JPEG scans belong to no series; their results are per slice only.
    """
    job = owned_job(job_id)
    with_slices = validated(SeriesQuery, request.args).slices
    positive, negative = class_names(db_session(), job)
    rule = job.series_rule
    fewest = min_series_slices(job.intended_use)
    found = [
        s.as_dict(positive, negative, with_slices)
        for s in job_series(
            db_session(),
            job.id,
            rule,
            fewest,
            receiving=job.open_until is not None,
            expected=job.series_expected,
        )
    ]
    audit("series.read", job_id, {"series": len(found)})
    return jsonify(series=found, rule=rule)


@bp.get("/<job_id>/series/<series_uid>/sr")
@requires("read")
@operation(
    "A series' result as a DICOM Structured Report",
    responses={
        200: Reply(
            "The Comprehensive 3D SR (Part 10 file)",
            media={"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
            headers={"Content-Disposition": "attachment; its file name"},
        )
    },
    errors=(404, 409, 410, 422),
    path=SeriesReportPath,
)
def series_report(job_id: str, series_uid: str) -> Response:
    """The series' result as a DICOM Structured Report (``application/dicom``).

    400 for a series UID that is not a UID; 404 for a series the job does not have; 409
    while no slice of it has a result, or while it has fewer slices than a series result
    needs (the job's ``min_series_slices``); 410 when its stored slices are gone; 422 when
    its slices' headers cannot be referenced.
    """
    checked_series_uid(series_uid)
    job = owned_job(job_id)
    svc = services()
    document = series_document(
        db_session(), svc.blobs, svc.settings.max_scan_bytes, job, series_uid
    )
    audit("series.sr", job_id, {"series_uid": series_uid, "bytes": len(document)})
    return Response(
        document,
        mimetype="application/dicom",
        headers={
            "Content-Disposition": attachment(f"covidscan-sr-{job.id[:12]}-{series_uid[-16:]}.dcm")
        },
    )


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` naming ``filename``, with anything but letters, digits, dots
    and dashes replaced: nothing in it can end the header or the quoted name."""
    return f'attachment; filename="{UNSAFE_IN_FILENAME.sub("_", filename)}"'
