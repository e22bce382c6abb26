"""``GET /v1/jobs/<id>/series``: a job's DICOM series, each with its P(COVID) and its slices."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request

from api.audit import audit
from api.auth import owned_job, requires
from api.extensions import db_session, services
from api.fields import validated
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import SeriesList, SeriesQuery, SeriesReportPath
from db.blobs import BlobNotFound
from db.models import Job, Model, ScanStatus
from db.series import find_series, job_series, min_series_slices

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)
bp = Blueprint("series", __name__, url_prefix="/v1/jobs")

DEFAULT_CLASSES = ("COVID", "NonCOVID")
UNSAFE_IN_FILENAME = re.compile(r"[^0-9A-Za-z.-]")


def class_names(job: Job) -> tuple[str, str]:
    """(positive, other) class names of the job's model, for a series' label."""
    model = db_session().get(Model, job.model_id) if job.model_id else None
    if model is None:
        return DEFAULT_CLASSES
    others = [c for c in model.classes if c != model.positive_class]
    return model.positive_class, (others[0] if len(others) == 1 else f"not {model.positive_class}")


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
    positive, negative = class_names(job)
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
    needs (the job's ``min_series_slices``); 422 when its slices' headers cannot be
    referenced.
    """
    from api.dicom_sr import (
        UID_PATTERN,
        EvidenceError,
        SeriesFinding,
        build_report,
        evidence_header,
    )

    if not UID_PATTERN.fullmatch(series_uid):
        raise Problem(400, "a Series Instance UID is digits and dots, at most 64 characters")
    job = owned_job(job_id)
    series = find_series(
        db_session(), job.id, job.series_rule, series_uid, min_series_slices(job.intended_use)
    )
    if series is None:
        raise Problem(404, f"job {job_id} has no DICOM series {series_uid!r}")
    if series.skipped is not None:
        raise Problem(409, f"series {series_uid} has no result: {series.skipped}")
    done = [s for s in series.slices if s.status == ScanStatus.SUCCEEDED]
    if not done or series.probability_covid is None:
        raise Problem(409, f"no slice of series {series_uid} has a result yet")
    positive, negative = class_names(job)
    first = done[0]
    finding = SeriesFinding(
        series.probability_covid,
        series.label(positive, negative) == positive,
        series.rule,
        first.model_name or "unknown",
        first.model_version or "unknown",
        first.model_sha256 or "",
        first.preprocessing or "",
    )
    evidence: list[Dataset] = []
    frames: dict[str, list[int]] = {}  # only instances with a UID can be referenced
    blobs = services().blobs
    for scan in done:
        if scan.frame is not None and scan.sop_instance_uid is not None:
            frames.setdefault(scan.sop_instance_uid, []).append(scan.frame + 1)
    try:
        for blob_key in dict.fromkeys(s.blob_key for s in done):
            evidence.append(
                evidence_header(blobs.get(blob_key), services().settings.max_scan_bytes)
            )
        document = build_report(evidence, finding, frames)
    except BlobNotFound:
        raise Problem(410, f"the stored slices of series {series_uid} are gone") from None
    except EvidenceError as exc:
        raise Problem(422, f"no report can be made for series {series_uid}: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # highdicom refuses what it cannot copy or reference (a SOP class it does not know,
        # a malformed attribute); named by type only, its message may quote the header.
        log.warning("a report for a series of job %s failed (%s)", job.id, type(exc).__name__)
        raise Problem(
            422,
            f"no report can be made for series {series_uid}: its slices' "
            f"headers lack what a DICOM SR must copy or reference "
            f"({type(exc).__name__})",
        ) from None
    audit("series.sr", job_id, {"series_uid": series_uid, "instances": len(evidence)})
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
