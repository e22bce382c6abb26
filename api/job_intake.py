"""What a job submission asks for, and accepting a job whose slices are stored.

Shared by the one-step upload (multipart, ``api/jobs.py``) and the two-step one
(presigned uploads to the object store, ``api/direct_uploads.py``).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

from flask import Response, jsonify, url_for
from sqlalchemy.exc import IntegrityError

from api.audit import audit
from api.extensions import db_session, services
from api.limits import confirm_active_jobs, scan_quota
from api.metrics import job_submitted
from api.models import resolve_model
from api.problems import Problem
from api.serialize import job_json
from api.webhooks import checked_callback_url
from covidscan.settings import PRECISIONS
from db.explanations import METHODS, queue_job_explanations
from db.jobs import JobOptions, NewScan, create_job, lock_owner, summarise_jobs
from db.models import PRIORITIES, Job, priority_rank
from db.outbox import relay

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 200


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise Problem(400, f"{name} must be a string")
    return (value or "").strip()


@dataclass(frozen=True)
class JobRequest:
    """The optional ``name``, ``model``, ``precision``, ``priority``, ``callback_url`` and
    ``explain`` of a submission."""

    name: Optional[str] = None
    model_ref: Optional[str] = None
    precision: Optional[str] = None
    priority: str = "normal"
    callback_url: Optional[str] = None
    explain: Optional[str] = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "JobRequest":
        """Read and check the fields (a form or a JSON object).

        Raises:
            Problem: 400 naming the field that is too long or not one of its choices.
        """
        name = _text(fields, "name") or None
        if name is not None and len(name) > MAX_NAME_LENGTH:
            raise Problem(400, f"name is longer than {MAX_NAME_LENGTH} characters")
        precision = _text(fields, "precision").lower() or None
        if precision is not None and precision not in PRECISIONS:
            raise Problem(400, f"precision must be one of {', '.join(PRECISIONS)}, "
                               f"got {precision!r}")
        priority = _text(fields, "priority").lower() or "normal"
        if priority not in PRIORITIES:
            raise Problem(400, f"priority must be one of {', '.join(PRIORITIES)}, "
                               f"got {priority!r}")
        explain = _text(fields, "explain").lower() or None
        if explain is not None and explain not in METHODS:
            raise Problem(400, f"explain must be one of {', '.join(METHODS)}, got {explain!r}")
        request = cls(name, _text(fields, "model") or None, precision, priority,
                      checked_callback_url(_text(fields, "callback_url")), explain)
        resolve_model(request.model_ref)  # 400 now for an unknown model
        return request

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def accept_job(job_id: str, owner: str, job_request: JobRequest, new_scans: Sequence[NewScan],
               skipped: Sequence[dict[str, str]] = (),
               open_seconds: int = 0) -> tuple[Response, int, dict[str, str]]:
    """Charge the quota, write the job, its scans, wake-ups and audit row in one
    transaction, send the wake-ups; 202 with the job. Blobs are deleted on any error.

    ``open_seconds`` > 0: the job stays open for more parts (it may start with none)."""
    svc = services()
    try:
        if db_session().get(Job, job_id) is not None:
            raise Problem(409, f"job {job_id} has already started")
        scan_quota().charge(owner, len(new_scans),
                            len(new_scans) if job_request.explain else 0)
        session = db_session()
        model = resolve_model(job_request.model_ref)
        lock_owner(session, owner)
        job = create_job(session, new_scans, job_id, JobOptions(
            name=job_request.name, owner=owner, requested_model=job_request.model_ref,
            model=model, priority=priority_rank(job_request.priority),
            precision=job_request.precision, retention_seconds=svc.settings.job_retention,
            chunk_size=svc.settings.batch_size, explain=job_request.explain,
            series_rule=svc.settings.series_rule if any(s.dicom for s in new_scans) else None,
            open_seconds=open_seconds))
        confirm_active_jobs(session, owner)  # requests racing past the first check
        job.callback_url = job_request.callback_url
        if job_request.explain:
            queue_job_explanations(session, job, job_request.explain)
        audit("job.submit", job_id, {"scans": len(new_scans), "model": job.model_name and
                                     f"{job.model_name}:{job.model_version}",
                                     **({"open": True} if open_seconds else {})}, commit=False)
        session.commit()  # the job, its scans, its wake-ups and its audit row, or none
    except IntegrityError:  # the same job started twice at once: the first one has its blobs
        db_session().rollback()
        raise Problem(409, f"job {job_id} has already started") from None
    except Problem as exc:
        db_session().rollback()
        if exc.status != 409:
            svc.blobs.delete_job(job_id)
        raise
    except BaseException:
        db_session().rollback()
        svc.blobs.delete_job(job_id)
        raise
    relay(svc.session_factory, svc.send_wakeups)
    job_submitted(job_request.priority, len(new_scans))
    log.info("job %s: %d scans accepted, %d entries skipped", job_id, len(new_scans),
             len(skipped))
    body = job_json(summarise_jobs(session, [job])[0])
    body["skipped"] = list(skipped)
    return jsonify(body), 202, {"Location": url_for("jobs.get_job", job_id=job_id)}
