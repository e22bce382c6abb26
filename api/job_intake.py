"""What a job submission asks for, and accepting a job whose slices are stored.

Shared by the one-step upload (multipart, ``api/jobs.py``) and the two-step one
(presigned uploads to the object store, ``api/direct_uploads.py``). The options arrive as
:class:`api.schemas.SubmissionOptions`; :func:`job_options` is the one place they become
the database's :class:`db.jobs.JobOptions`.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from flask import Response, jsonify, url_for
from sqlalchemy.exc import IntegrityError

from api.audit import audit
from api.extensions import db_session, services
from api.limits import confirm_active_jobs, scan_quota
from api.metrics import job_submitted
from api.models import resolve_model
from api.problems import Problem
from api.schemas import SubmissionOptions
from api.serialize import job_json
from api.webhooks import checked_callback_url
from db.explanations import queue_job_explanations
from db.jobs import JobOptions, NewScan, create_job, lock_owner, summarise_jobs
from db.models import Job, Model, priority_rank
from db.outbox import relay

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


def job_options(options: SubmissionOptions, owner: str, model: Optional[Model],
                new_scans: Sequence[NewScan], open_seconds: int) -> JobOptions:
    """A submission's options as the database takes them, with the server's settings."""
    settings = services().settings
    return JobOptions(
        name=options.name, owner=owner, requested_model=options.model, model=model,
        priority=priority_rank(options.priority), precision=options.precision,
        callback_url=options.callback_url, retention_seconds=settings.job_retention,
        chunk_size=settings.batch_size, explain=options.explain,
        series_rule=settings.series_rule if any(s.dicom for s in new_scans) else None,
        open_seconds=open_seconds)


def accept_job(job_id: str, owner: str, job_request: SubmissionOptions,
               new_scans: Sequence[NewScan],
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
        model = resolve_model(job_request.model)
        lock_owner(session, owner)
        job = create_job(session, new_scans, job_id, job_options(job_request, owner, model,
                                                                 new_scans, open_seconds))
        confirm_active_jobs(session, owner)  # requests racing past the first check
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
