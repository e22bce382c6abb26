"""What a job submission asks for, and the job service every submitting route calls.

Shared by the one-step upload (multipart, ``api/jobs.py``), the two-step one (presigned
uploads to the object store, ``api/direct_uploads.py``) and STOW-RS (``api/dicomweb.py``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

from flask import Response, jsonify, url_for

from api.auth import current_principal
from api.extensions import db_session, services
from api.limits import scan_quota
from api.models import resolve_model
from api.problems import Problem
from api.serialize import job_json
from api.webhooks import checked_callback_url
from core.jobs.service import Actor, JobService, Submission
from covidscan.settings import PRECISIONS
from db.explanations import METHODS
from db.jobs import NewScan, summarise_jobs
from db.models import PRIORITIES

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 200


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise Problem(400, f"{name} must be a string")
    return (value or "").strip()


class JobRequest(Submission):
    """The optional ``name``, ``model``, ``precision``, ``priority``, ``callback_url`` and
    ``explain`` of a submission, read from a form or a JSON object."""

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


def job_service() -> JobService:
    """The app's job service (:mod:`core.jobs.service`), made when first asked for."""
    svc = services()
    service = svc.extras.get("jobs")
    if service is None:
        service = svc.extras["jobs"] = JobService(svc.settings, svc.session_factory, svc.blobs,
                                                  scan_quota(), svc.send_wakeups)
    return service


def actor(via: Optional[str] = None) -> Actor:
    """The caller, for the job service: its owner, its key and the way in."""
    principal = current_principal()
    return Actor(principal.owner, principal.key_id, via)


def accept_job(job_id: str, caller: Actor, submission: Submission,
               new_scans: Sequence[NewScan], skipped: Sequence[dict[str, str]] = (),
               open_seconds: int = 0) -> tuple[Response, int, dict[str, str]]:
    """Accept a new job whose files are stored (:meth:`JobService.submit`); 202 with it.

    ``open_seconds`` > 0: the job stays open for more parts (it may start with none)."""
    session = db_session()
    job = job_service().submit(session, caller, job_id, new_scans, submission,
                               open_seconds=open_seconds)
    log.info("job %s: %d entries skipped", job_id, len(skipped))
    body = job_json(summarise_jobs(session, [job])[0])
    body["skipped"] = list(skipped)
    return jsonify(body), 202, {"Location": url_for("jobs.get_job", job_id=job_id)}
