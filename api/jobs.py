"""``/v1/jobs``: submit a bulk job, read its status and results, cancel it, delete it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import IO, Optional

from flask import Blueprint, Response, jsonify, request, stream_with_context

from api.audit import audit
from api.auth import current_principal, owned_job, requires
from api.direct_uploads import create_direct_upload
from api.extensions import db_session, services
from api.fields import validated
from api.job_intake import accept_job, actor, checked_options, job_service
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import (
    AddScansForm,
    DirectUpload,
    DirectUploadRequest,
    Job,
    JobList,
    JobListQuery,
    ResultsPage,
    ResultsQuery,
    SubmitJobForm,
    SubmittedJob,
)
from api.serialize import csv_lines, job_json, result_row
from core.intake import ParsedUpload, UploadLimits, iter_scans, parse_modalities, scans_of
from core.jobs.storing import discard, store_uploads
from db.explanations import explained_scan_ids
from db.jobs import (
    JobSummary,
    NewScan,
    iter_results,
    job_scan_count,
    recent_job_summaries,
    results_page,
    summarise_jobs,
)
from db.models import new_id

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
@requires("submit")
@operation(
    "Submit a bulk job",
    form=SubmitJobForm,
    body=DirectUploadRequest,
    form_encoding={"files": "image/png, image/jpeg, application/dicom, application/zip"},
    responses={
        201: Reply(
            "A two-step upload (JSON body; S3 store only, the folder "
            "store answers 415): where to PUT each slice",
            DirectUpload,
        ),
        202: Reply(
            "Accepted: the job, queued", SubmittedJob, headers={"Location": "the job's URL"}
        ),
    },
    errors=(413, 415, 503),
)
def submit_job() -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    """Store the uploaded scans; write the job, pinned to its model, with its wake-ups; 202.

    The wake-ups are sent after the commit; when Redis refuses them they stay in the
    outbox for the next sweep, and the job is accepted all the same.
    The job belongs to the caller's owner; quotas are checked before anything is stored.
    With ``open=true`` the job takes more parts (:func:`add_scans`) until :func:`seal`.
    """
    if request.is_json:
        return create_direct_upload()
    svc = services()
    caller = actor("multipart")
    fields = request.form.to_dict()
    fields.pop("files", None)  # files are file parts (_file_parts), never a text field
    form = validated(SubmitJobForm, fields)
    job_service().check_room(db_session(), caller.owner)
    parts = _file_parts(required=not form.open)
    job_request = checked_options(form)
    job_id = new_id()
    new_scans: list[NewScan] = []
    skipped: list[dict[str, str]] = []
    if parts:
        new_scans, skipped = _store_scans(
            parts, lambda i: svc.blobs.key_for(job_id, i), job_id=job_id
        )
    return accept_job(
        job_id,
        caller,
        job_request,
        new_scans,
        skipped,
        open_seconds=svc.settings.open_job_timeout if form.open else 0,
    )


def _file_parts(required: bool = True) -> list[tuple[str, IO[bytes]]]:
    parts = [
        (f.filename or f"file-{i + 1}", f.stream)
        for i, f in enumerate(request.files.getlist("files"))
    ]
    if required and not parts:
        raise Problem(
            400,
            "no files: send one or more multipart parts named 'files' "
            "(PNG, JPEG or DICOM slices, or ZIP archives of them)",
        )
    return parts


def _store_scans(
    parts: Sequence[tuple[str, IO[bytes]]],
    key_of: Callable[[int], str],
    job_id: Optional[str] = None,
    already: int = 0,
) -> tuple[list[NewScan], list[dict[str, str]]]:
    """Check every part and store each file under ``key_of(index)``; the scans and what
    was skipped. On any error the files stored so far are deleted (with ``job_id``, the
    job's whole folder: a new job's) and the error goes on.

    ``already``: scans the job holds, counted against MAX_SCANS_PER_JOB.
    """
    svc = services()
    limits = UploadLimits.from_settings(svc.settings)
    limits.modalities = parse_modalities(request.form.get("allow_modality") or "")
    parsed = ParsedUpload(count=already)
    new_scans = store_uploads(
        svc.blobs, iter_scans(parts, limits, parsed), key_of, scans_of, job_id
    )
    skipped = [s.as_dict() for s in parsed.skipped]
    if not new_scans:
        discard(svc.blobs, [], job_id)
        raise Problem(400, "the upload holds no PNG, JPEG or DICOM images", skipped=skipped)
    return new_scans, skipped


@bp.post("/<job_id>/scans")
@requires("submit")
@operation(
    "Add scans to an open job",
    form=AddScansForm,
    responses={202: Reply("Accepted: the job, with what of this part was skipped", SubmittedJob)},
    errors=(404, 409, 413, 415, 503),
)
def add_scans(job_id: str) -> tuple[Response, int]:
    """Store one more part of an open job's scans; they are queued at once.

    A part is taken whole or not at all: a refused part leaves nothing behind, and the
    parts taken before it stay. Each part keeps the job open for OPEN_JOB_TIMEOUT more.
    """
    svc = services()
    caller = actor("parts")
    session = db_session()
    job = owned_job(job_id)
    if job.open_until is None:
        raise Problem(
            409,
            f"job {job_id} is {'cancelled' if job.cancelled_at else 'sealed'}; "
            "it takes no more scans",
        )
    job_service().check_room(session, caller.owner, new_job=False)
    parts = _file_parts()
    part = new_id()[:12]
    already = job_scan_count(session, job_id)
    session.rollback()  # read outside the part's transaction, which begins with its lock
    new_scans, skipped = _store_scans(
        parts, lambda i: svc.blobs.part_key(job_id, part, i), already=already
    )
    job_service().append(session, caller, job, new_scans, part=True)
    log.info(
        "job %s: a part of %d scans accepted, %d entries skipped",
        job_id,
        len(new_scans),
        len(skipped),
    )
    body = job_json(owned_summary(job_id))
    body["skipped"] = skipped
    return jsonify(body), 202


@bp.post("/<job_id>/seal")
@requires("submit")
@operation(
    "Seal an open job: it takes no more scans and ends when they do",
    responses={200: Job},
    errors=(404, 409),
)
def seal(job_id: str) -> Response:
    """Idempotent: sealing a sealed job answers the job as it is."""
    job_service().seal(db_session(), actor(), owned_job(job_id))
    return jsonify(job_json(owned_summary(job_id)))


@bp.get("")
@requires("read")
@operation("The caller's recent jobs", query=JobListQuery, responses={200: JobList})
def list_jobs() -> Response:
    """The caller's jobs, newest first (an administrator's: everyone's)."""
    query = validated(JobListQuery, request.args)
    summaries = recent_job_summaries(db_session(), query.limit, current_principal().job_owner)
    return jsonify(jobs=[job_json(summary) for summary in summaries])


def owned_summary(job_id: str) -> JobSummary:
    """The caller's job with its counts; 404 for a missing job or another owner's."""
    return summarise_jobs(db_session(), [owned_job(job_id)])[0]


@bp.post("/<job_id>/cancel")
@requires("submit")
@operation("Cancel a job", responses={200: Job}, errors=(404,))
def cancel(job_id: str) -> Response:
    """Cancel waiting scans at once; running ones finish. Idempotent."""
    job_service().cancel(db_session(), actor(), owned_job(job_id))
    return jsonify(job_json(owned_summary(job_id)))


@bp.delete("/<job_id>")
@requires("submit")
@operation(
    "Delete a job", responses={204: Reply("Deleted, with its scans and bytes")}, errors=(404,)
)
def delete(job_id: str) -> tuple[str, int]:
    """Delete the job, its scans, uploaded bytes and thumbnails; running work is cancelled."""
    job_service().delete(db_session(), actor(), owned_job(job_id))
    return "", 204


@bp.get("/<job_id>")
@requires("read")
@operation("A job's status and counts", responses={200: Job}, errors=(404,))
def get_job(job_id: str) -> Response:
    return jsonify(job_json(owned_summary(job_id)))


@bp.get("/<job_id>/results")
@requires("read")
@operation(
    "A job's results, a page at a time (JSON) or all at once (CSV)",
    query=ResultsQuery,
    responses={
        200: Reply(
            "A page of results, or every row as CSV",
            ResultsPage,
            media={"text/csv": {"schema": {"type": "string"}}},
        )
    },
    errors=(404,),
)
def get_results(job_id: str) -> Response:
    summary = owned_summary(job_id)
    query = validated(ResultsQuery, request.args)  # limit and cursor checked for CSV too
    cursor = -1 if query.cursor is None else query.cursor
    if query.format == "csv":
        audit("results.csv", job_id)
        session = services().session_factory()

        def generate():
            try:
                yield from csv_lines(iter_results(session, job_id))
            finally:
                session.close()

        filename = f"covidscan-{summary.job.id}.csv"
        return Response(
            stream_with_context(generate()),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    page, next_cursor = results_page(db_session(), job_id, query.limit, cursor)
    audit("results.read", job_id, {"cursor": cursor, "rows": len(page)})
    explained = explained_scan_ids(db_session(), [s.id for s in page])
    rows = [dict(result_row(s), explanation=explained.get(s.id)) for s in page]
    return jsonify(
        results=rows,
        next_cursor=None if next_cursor is None else str(next_cursor),
        status=summary.status,
    )
