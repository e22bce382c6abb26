"""The two-step upload: slices go straight to the object store, not through the API.

1. ``POST /v1/jobs`` with a JSON body ``{"files": [{"filename", "size"}], "name", ...}``
   answers 201 with one presigned ``PUT`` URL per slice (S3 store only; the folder store
   answers 415: send a multipart upload instead). The URL is signed for that size.
2. The client PUTs each slice to its URL.
3. ``POST /v1/jobs/<id>/start`` has the store copy each object to the key the job's scan
   reads, which no upload URL can write, then reads the copy's size and header back and
   applies the checks of a multipart upload (every file is hostile until its header is
   checked); a bad one refuses the job, naming every bad slice, and nothing is kept.
   Otherwise the job is accepted as a multipart upload is (202). A PUT to an upload URL
   after the start (the URLs stay valid until they expire) changes nothing a worker reads:
   what was checked is what is classified.

Until it starts, the job is only a manifest beside its slices (``<id>/upload.json``): no
row, no scan a worker could lease. One that never starts is deleted with the orphan blobs.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from flask import Blueprint, Response, jsonify, request, url_for

from api.audit import audit
from api.auth import current_principal, owned_job, requires
from api.extensions import db_session, services
from api.fields import validated
from api.job_intake import accept_job, checked_options, job_service
from api.openapi import Reply, operation
from api.problems import Problem, as_problem
from api.schemas import Job, SubmissionOptions, SubmittedJob
from api.serialize import job_json
from core.errors import IntakeError
from core.intake import UploadLimits, check_stored_slice
from core.intake.archives import check_name
from core.jobs.service import Actor
from covidscan.contract import UploadStatus
from db.blobs import BlobNotFound, BlobStore
from db.jobs import NewScan, find_job, summarise_jobs
from db.models import new_id

bp = Blueprint("direct_uploads", __name__, url_prefix="/v1/jobs")

MANIFEST = "upload.json"
HEADER_BYTES = 1024 * 1024
"""How much of each slice the start step reads: PNG and JPEG headers come first, and this
leaves room for large ICC profiles and metadata before them."""
READERS = 16


def upload_key(job_id: str, position: int) -> str:
    """Where the presigned URL of a slice writes: the start step copies it from there."""
    return f"{job_id}/upload-{position:06d}"


def _declared_files(body: dict[str, Any], limits: UploadLimits, budget: int) -> list[dict]:
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise Problem(400, 'files must be a non-empty list of {"filename", "size"} objects')
    if len(files) > limits.max_scans:
        raise Problem(413, f"a job holds at most {limits.max_scans} scans (MAX_SCANS_PER_JOB)")
    declared, total = [], 0
    for entry in files:
        filename = entry.get("filename") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(filename, str) or not isinstance(size, int) or isinstance(size, bool):
            raise Problem(400, 'each file must be {"filename": string, "size": whole number}')
        check_name(filename, filename)
        if size < 1:
            raise Problem(400, f"{filename} is empty", filename=filename)
        if size > limits.max_scan_bytes:
            raise Problem(
                413,
                f"{filename} is larger than the per-scan limit of "
                f"{limits.max_scan_bytes} bytes (MAX_SCAN_BYTES)",
                filename=filename,
            )
        total += size
        if total > budget:
            raise Problem(
                413,
                f"the upload is more than {budget} bytes at {filename} (MAX_EXPANDED_BYTES)",
                filename=filename,
            )
        declared.append({"filename": filename, "size": size})
    return declared


def create_direct_upload() -> tuple[Response, int]:
    """Step 1 (``POST /v1/jobs`` with JSON): presigned upload URLs and the start URL."""
    svc = services()
    job_id = new_id()
    expires = svc.settings.upload_url_seconds
    if svc.blobs.upload_url(upload_key(job_id, 0), 1, expires) is None:
        raise Problem(
            415,
            "this server takes slices in a multipart/form-data POST /v1/jobs; "
            "presigned uploads need the S3 blob store (BLOB_STORE=s3://...)",
        )
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Problem(400, "the body must be a JSON object with a files list")
    owner = current_principal().owner
    job_service().check_room(db_session(), owner)
    limits = UploadLimits.from_settings(svc.settings)
    files = _declared_files(body, limits, svc.settings.max_expanded_bytes)
    job_request = checked_options(validated(SubmissionOptions, body))
    parts = []
    for position, entry in enumerate(files):
        url = svc.blobs.upload_url(upload_key(job_id, position), entry["size"], expires)
        parts.append(
            {
                **entry,
                "method": "PUT",
                "url": url,
                "headers": {"Content-Length": str(entry["size"])},
            }
        )
    manifest = {"owner": owner, "request": job_request.model_dump(), "files": files}
    svc.blobs.put(f"{job_id}/{MANIFEST}", json.dumps(manifest).encode())
    audit("job.upload_urls", job_id, {"scans": len(files)})
    return jsonify(
        id=job_id,
        status=UploadStatus.AWAITING_UPLOAD,
        expires_in=expires,
        parts=parts,
        start_url=url_for("direct_uploads.start_job", job_id=job_id),
    ), 201


def _manifest(job_id: str) -> Optional[dict[str, Any]]:
    """The caller's pending upload; None if the caller's job has started already.

    Raises:
        Problem: 404 for no such upload or job, or another owner's (the same answer).
    """
    try:
        manifest = json.loads(services().blobs.get(f"{job_id}/{MANIFEST}"))
    except (BlobNotFound, ValueError):
        manifest = None
    principal = current_principal()
    if manifest is None and find_job(db_session(), job_id, principal.job_owner):
        return None
    if manifest is None or (manifest["owner"] != principal.owner and not principal.is_admin):
        raise Problem(404, f"no job with id {job_id!r}")
    return manifest


def _check_one(
    blobs: BlobStore, job_id: str, position: int, entry: dict, limits: UploadLimits
) -> NewScan | Problem | None:
    """The slice as a new scan, a Problem saying why it is refused, or None if missing.

    The slice is copied first to the scan's key, which no upload URL writes, and the copy
    is checked: a PUT racing the start, or coming after it, cannot change what was checked.
    Runs in a thread of its own: it takes the store, not the request's context."""
    key, filename = blobs.key_for(job_id, position), entry["filename"]
    try:
        blobs.copy(upload_key(job_id, position), key)
        head = blobs.get(key, HEADER_BYTES)  # one request for a slice smaller than this
        size = len(head) if len(head) < HEADER_BYTES else blobs.size(key)
        if size != entry["size"]:
            return Problem(
                400,
                f"{filename} has {size} bytes, not the {entry['size']} declared",
                filename=filename,
            )
        check_stored_slice(filename, head, size, limits)
    except BlobNotFound:
        return None
    except IntakeError as exc:
        return as_problem(exc)
    return NewScan(filename, key, size)


@bp.post("/<job_id>/start")
@requires("submit")
@operation(
    "Start a two-step upload once its slices are uploaded",
    responses={
        200: Reply("Started already: the job as it is", Job),
        202: Reply(
            "Accepted: the job, queued", SubmittedJob, headers={"Location": "the job's URL"}
        ),
    },
    errors=(404, 409, 413, 415, 503),
)
def start_job(job_id: str) -> tuple[Response, int, dict[str, str]]:
    """Step 3: check every uploaded slice's header, then accept the job (202).

    Idempotent: a job that has started already answers 200 with its state."""
    svc = services()
    manifest = _manifest(job_id)
    if manifest is None:
        return jsonify(job_json(summarise_jobs(db_session(), [owned_job(job_id)])[0])), 200, {}
    files = manifest["files"]
    limits = UploadLimits.from_settings(svc.settings)
    with ThreadPoolExecutor(READERS, thread_name_prefix="header") as pool:
        outcomes = list(
            pool.map(
                lambda position, entry: _check_one(svc.blobs, job_id, position, entry, limits),
                range(len(files)),
                files,
            )
        )
    missing = [f["filename"] for f, outcome in zip(files, outcomes) if outcome is None]
    if missing:
        raise Problem(
            409,
            f"{len(missing)} of {len(files)} slices are not uploaded yet: "
            f"{', '.join(missing[:20])}",
            missing=missing,
        )
    refused = [o for o in outcomes if isinstance(o, Problem)]
    if refused:
        svc.blobs.delete_job(job_id)
        raise Problem(
            refused[0].status,
            f"{len(refused)} of {len(files)} slices were refused and nothing was "
            f"kept: {'; '.join(p.detail for p in refused[:20])}",
            refused=[
                {"filename": p.extra.get("filename"), "status": p.status, "detail": p.detail}
                for p in refused
            ],
        )
    owner = manifest["owner"]
    job_service().check_room(db_session(), owner)
    stored = manifest["request"]
    if "model_ref" in stored:  # a manifest written before the options had one shape
        stored["model"] = stored.pop("model_ref")
    response = accept_job(
        job_id,
        Actor(owner, current_principal().key_id, "direct"),
        SubmissionOptions.model_validate(stored),
        [o for o in outcomes if isinstance(o, NewScan)],
    )
    svc.blobs.delete(f"{job_id}/{MANIFEST}")
    with ThreadPoolExecutor(READERS, thread_name_prefix="cleanup") as pool:
        list(pool.map(svc.blobs.delete, [upload_key(job_id, i) for i in range(len(files))]))
    return response
