"""``GET /v1/jobs/<id>/series``: a job's DICOM series, each with its P(COVID) and its slices."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.audit import audit
from api.auth import owned_job, requires
from api.extensions import db_session
from db.models import Job, Model
from db.series import job_series

bp = Blueprint("series", __name__, url_prefix="/v1/jobs")

DEFAULT_CLASSES = ("COVID", "NonCOVID")


def class_names(job: Job) -> tuple[str, str]:
    """(positive, other) class names of the job's model, for a series' label."""
    model = db_session().get(Model, job.model_id) if job.model_id else None
    if model is None:
        return DEFAULT_CLASSES
    others = [c for c in model.classes if c != model.positive_class]
    return model.positive_class, (others[0] if len(others) == 1 else f"not {model.positive_class}")


@bp.get("/<job_id>/series")
@requires("read")
def list_series(job_id: str) -> Response:
    """Each DICOM series of the job: UIDs, modality, counts, P(COVID), label and the rule.

    ``?slices=1`` adds the slices in order along the patient axis with their probabilities.
    PNG and JPEG scans belong to no series; their results are per slice only.
    """
    job = owned_job(job_id)
    with_slices = request.args.get("slices", "0") in ("1", "true", "yes")
    positive, negative = class_names(job)
    rule = job.series_rule
    found = [s.as_dict(positive, negative, with_slices)
             for s in job_series(db_session(), job.id, rule)]
    audit("series.read", job_id, {"series": len(found)})
    return jsonify(series=found, rule=rule)
