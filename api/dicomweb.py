"""DICOMweb STOW-RS: ``POST /v1/dicomweb/studies`` stores DICOM instances into a job.

The body is ``multipart/related; type="application/dicom"``, one Part 10 instance a part.
The instances go through the same header checks as ``POST /v1/jobs`` (limits, modality,
non-images); those that pass are stored in a new job, or appended to the caller's job
named by ``?job=<id>``. The answer is the standard STOW response (``application/dicom+json``):
``ReferencedSOPSequence`` for the stored instances, ``FailedSOPSequence`` with a failure
reason for the others; 200 when all were stored, 202 when some were, 409 when none was.
``Location`` names the job.
"""
from __future__ import annotations

import io
import logging
from typing import Any, Optional

from flask import Blueprint, Response, json, request, url_for

from api.auth import owned_job, requires
from api.extensions import db_session, services
from api.job_intake import actor, job_service
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import StowQuery
from core.intake import ParsedUpload, UploadLimits, iter_scans, scans_of
from core.jobs.storing import store_uploads
from db.jobs import job_scan_count
from db.models import new_id

log = logging.getLogger(__name__)
bp = Blueprint("dicomweb", __name__, url_prefix="/v1/dicomweb")

DICOM_JSON = "application/dicom+json"
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC000


def _boundary() -> bytes:
    mimetype = request.mimetype
    options = request.mimetype_params
    kind = options.get("type", "").strip('"').lower()
    if mimetype != "multipart/related" or kind != "application/dicom" \
            or not options.get("boundary"):
        raise Problem(415, 'STOW-RS takes multipart/related; type="application/dicom" with a '
                           f"boundary, got {request.content_type!r}")
    return options["boundary"].strip('"').encode("latin-1")


def split_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The bodies of a multipart/related message's parts (RFC 2046), in order.

    Raises:
        Problem: 400 for a part without headers or not of type application/dicom.
    """
    delimiter = b"--" + boundary
    pieces = body.split(delimiter)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):  # the closing delimiter
            break
        piece = piece[2:] if piece.startswith(b"\r\n") else piece
        headers, separator, content = piece.partition(b"\r\n\r\n")
        if not separator:
            raise Problem(400, "a multipart part has no header block")
        kind = next((line.split(b":", 1)[1].strip().lower() for line in headers.split(b"\r\n")
                     if line.lower().startswith(b"content-type:")), b"application/dicom")
        if not kind.startswith(b"application/dicom"):
            raise Problem(415, f"a part is {kind.decode('latin-1')!r}, not application/dicom")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def _uids(data: bytes) -> tuple[Optional[str], Optional[str]]:
    """An instance's SOP class and instance UIDs, for its line in the response."""
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                  specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return dataset.get("SOPClassUID"), dataset.get("SOPInstanceUID")
    except Exception:  # noqa: BLE001 - an unreadable part is reported as not understood
        return None, None


def _sop_item(sop_class: Optional[str], sop_instance: Optional[str],
              reason: Optional[int] = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [str(sop_class)] if sop_class else []},
                            "00081155": {"vr": "UI",
                                         "Value": [str(sop_instance)] if sop_instance else []}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _stow_reply(description: str) -> Reply:
    return Reply(description, media={DICOM_JSON: {"schema": STOW_RESPONSE}},
                 headers={"Location": "the job's URL (when an instance was stored)"})


_SEQUENCE = {"type": "object", "additionalProperties": False, "required": ["vr", "Value"],
             "properties": {"vr": {"const": "SQ"}, "Value": {"type": "array", "items": {
                 "type": "object", "additionalProperties": {"type": "object"}}}}}
STOW_RESPONSE = {"type": "object", "additionalProperties": False,
                 "required": ["00081199"],
                 "description": "ReferencedSOPSequence (0008,1199): the stored instances; "
                                "FailedSOPSequence (0008,1198): the others, each with its "
                                "FailureReason (0008,1197)",
                 "properties": {"00081199": _SEQUENCE, "00081198": _SEQUENCE}}


@bp.post("/studies")
@requires("submit")
@operation("DICOMweb STOW-RS: store instances in a job", query=StowQuery,
           body_media={'multipart/related; type="application/dicom"': {
               "schema": {"type": "string", "format": "binary"}}},
           responses={200: _stow_reply("Every instance stored"),
                      202: _stow_reply("Some instances stored, the others failed"),
                      409: _stow_reply("No instance stored (or, as a problem, the job named "
                                       "was cancelled)")},
           errors=(404, 409, 413, 415, 503))
def store_instances() -> Response:
    """Store the instances in a new job (or ``?job=<id>``) and answer the STOW response."""
    svc = services()
    caller = actor("stow-rs")
    session = db_session()
    boundary = _boundary()
    parts = split_parts(request.get_data(cache=False), boundary)
    if not parts:
        raise Problem(400, "the request holds no parts")
    existing = request.args.get("job")
    job = owned_job(existing) if existing else None
    if job is not None and job.cancelled_at is not None:
        raise Problem(409, f"job {job.id} was cancelled; it takes no more instances")
    job_service().check_room(session, caller.owner, new_job=job is None)
    job_id = job.id if job is not None else new_id()
    # An existing job's new files get keys of this request's own: requests appending to
    # one job at once must not write over each other's bytes before their positions exist.
    part = new_id()[:12]
    named = [(f"instance-{i + 1}", io.BytesIO(data)) for i, data in enumerate(parts)]
    limits = UploadLimits.from_settings(svc.settings)
    parsed = ParsedUpload(count=job_scan_count(session, job_id) if job is not None else 0)
    stored: list[tuple[Optional[str], Optional[str]]] = []
    failed: list[dict[str, Any]] = []

    def instances(uploads):
        for upload in uploads:
            if not upload.dicom:  # a PNG or JPEG sent as application/dicom
                failed.append(_sop_item(None, None, CANNOT_UNDERSTAND))
                continue
            stored.append((upload.dicom[0].sop_class_uid, upload.dicom[0].sop_instance_uid))
            yield upload

    new_scans = store_uploads(
        svc.blobs, instances(iter_scans(named, limits, parsed)),
        (lambda i: svc.blobs.key_for(job_id, i)) if job is None
        else (lambda i: svc.blobs.part_key(job_id, part, i)),
        scans_of, job_id if job is None else None)
    failed += [_sop_item(*_uids(parts[int(s.filename.rsplit("-", 1)[1]) - 1]),
                         SOP_CLASS_NOT_SUPPORTED) for s in parsed.skipped]
    if new_scans and job is None:
        job_service().submit(session, caller, job_id, new_scans, name="DICOMweb STOW-RS")
    elif new_scans:
        session.rollback()  # the append's transaction begins with its locks
        job_service().append(session, caller, job, new_scans)
    log.info("job %s: STOW-RS stored %d instances, %d failed", job_id, len(stored), len(failed))
    body: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [_sop_item(*s) for s in stored]}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if stored else 409)
    headers = {"Location": url_for("jobs.get_job", job_id=job_id)} if new_scans else {}
    return Response(json.dumps(body), status=status, mimetype=DICOM_JSON, headers=headers)

