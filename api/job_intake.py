"""What a job submission asks for, and the job service every submitting route calls.

Shared by the one-step upload (multipart, ``api/jobs.py``), the two-step one (presigned
uploads to the object store, ``api/direct_uploads.py``) and STOW-RS (``api/dicomweb.py``).
The options arrive as :class:`api.schemas.SubmissionOptions` (the same model documents
and validates them); :func:`submission` is the one place they become the core's
:class:`core.jobs.service.Submission`, which the service writes as the job's options.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

from flask import Response, jsonify, url_for

from api.auth import current_principal
from api.extensions import db_session, services
from api.limits import scan_quota
from api.models import resolve_model
from api.schemas import SubmissionOptions
from api.serialize import job_json
from api.webhooks import checked_callback_url
from core.jobs.service import Actor, JobService, Submission
from db.jobs import NewScan, summarise_jobs

log = logging.getLogger(__name__)


def checked_options(options: SubmissionOptions) -> SubmissionOptions:
    """The options of a form or body that :func:`api.fields.validated` read, checked for the
    caller: its ``callback_url`` (an address it may use, signed) and its model (registered).

    Raises:
        Problem: 400 naming the callback URL or the model.
    """
    checked = options.options()
    checked.callback_url = checked_callback_url(checked.callback_url or "")
    resolve_model(checked.model)  # 400 now for an unknown model
    return checked


def submission(options: SubmissionOptions) -> Submission:
    """The checked options as the job service takes them."""
    return Submission(**options.options().model_dump())


def job_service() -> JobService:
    """The app's job service (:mod:`core.jobs.service`), made when first asked for."""
    svc = services()
    service = svc.extras.get("jobs")
    if service is None:
        service = svc.extras["jobs"] = JobService(
            svc.settings, svc.session_factory, svc.blobs, scan_quota(), svc.send_wakeups
        )
    return service


def actor(via: Optional[str] = None) -> Actor:
    """The caller, for the job service: its owner, its key and the way in."""
    principal = current_principal()
    return Actor(principal.owner, principal.key_id, via)


def accept_job(
    job_id: str,
    caller: Actor,
    options: SubmissionOptions,
    new_scans: Sequence[NewScan],
    skipped: Sequence[dict[str, str]] = (),
    open_seconds: int = 0,
) -> tuple[Response, int, dict[str, str]]:
    """Accept a new job whose files are stored (:meth:`JobService.submit`); 202 with it.

    ``open_seconds`` > 0: the job stays open for more parts (it may start with none)."""
    session = db_session()
    job = job_service().submit(
        session, caller, job_id, new_scans, submission(options), open_seconds=open_seconds
    )
    log.info("job %s: %d entries skipped", job_id, len(skipped))
    body = job_json(summarise_jobs(session, [job])[0])
    body["skipped"] = list(skipped)
    return jsonify(body), 202, {"Location": url_for("jobs.get_job", job_id=job_id)}
