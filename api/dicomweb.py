"""DICOMweb STOW-RS: ``POST /v1/dicomweb/studies`` stores DICOM instances into a job.

The body is ``multipart/related; type="application/dicom"``, one Part 10 instance a part.
The instances go through the same header checks as ``POST /v1/jobs`` (limits, modality,
non-images); those that pass are stored in a new job, or appended to the caller's job
named by ``?job=<id>``. The answer is the standard STOW response (``application/dicom+json``):
``ReferencedSOPSequence`` for the stored instances, ``FailedSOPSequence`` for the others,
each with its FailureReason (0xC000 for a part that is not a readable DICOM instance: another
content type, a ZIP archive, a PNG, an unreadable header; 0x0122 for a non-image or another
modality) and the reason in words in ErrorComment (0000,0902); 200 when all were stored, 202
when some were, 409 when none was. ``Location`` names the job. A limit (bytes, frames, scans
per job, quota) refuses the whole request, and nothing is stored.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from flask import Blueprint, Response, json, request, url_for

from api.auth import owned_job, requires
from api.extensions import db_session, services
from api.job_intake import actor, job_service
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import StowQuery
from core.errors import Malformed, Unsupported
from core.intake import (
    DICOM_TYPE,
    IMAGE_TYPES,
    SNIFF_BYTES,
    ZIP_TYPE,
    ParsedUpload,
    ScanUpload,
    UploadLimits,
    iter_scans,
    scans_of,
    sniff,
)
from core.intake.dicom_budget import file_meta_uids
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
    if (
        mimetype != "multipart/related"
        or kind != "application/dicom"
        or not options.get("boundary")
    ):
        raise Problem(
            415,
            'STOW-RS takes multipart/related; type="application/dicom" with a '
            f"boundary, got {request.content_type!r}",
        )
    return options["boundary"].strip('"').encode("latin-1")


@dataclass(frozen=True)
class Part:
    """One part of a multipart/related body: its media type (lower case) and its bytes."""

    media_type: str
    body: bytes


def split_typed_parts(body: bytes, boundary: bytes) -> list[Part]:
    """The parts of a multipart/related message (RFC 2046), in order; a part without a
    Content-Type is application/dicom (the request's ``type``).

    Raises:
        Problem: 400 for a part without a header block.
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
        kind = next(
            (
                line.split(b":", 1)[1].strip().lower()
                for line in headers.split(b"\r\n")
                if line.lower().startswith(b"content-type:")
            ),
            b"application/dicom",
        )
        media_type = kind.split(b";", 1)[0].strip().decode("latin-1")
        parts.append(Part(media_type, content[:-2] if content.endswith(b"\r\n") else content))
    return parts


def split_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The bodies of a multipart/related message's parts, in order."""
    return [part.body for part in split_typed_parts(body, boundary)]


def not_an_instance(part: Part, name: str) -> Optional[str]:
    """Why a part cannot be a DICOM instance (told by its type and its content, never
    expanded or parsed), or None for a part that may be one."""
    if part.media_type != DICOM_TYPE:
        return f"{name} is {part.media_type or 'untyped'}, not application/dicom"
    kind = sniff(part.body[:SNIFF_BYTES])
    if kind == ZIP_TYPE:
        return f"{name} is a ZIP archive, not a DICOM instance (archives are not expanded here)"
    if kind in IMAGE_TYPES:
        return f"{name} is a {IMAGE_TYPES[kind]} image, not a DICOM instance"
    if kind != DICOM_TYPE:
        return f"{name} is not a DICOM Part 10 instance" if part.body else f"{name} is empty"
    return None


def _sop_item(
    sop_class: Optional[str],
    sop_instance: Optional[str],
    reason: Optional[int] = None,
    comment: Optional[str] = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [str(sop_class)] if sop_class else []},
        "00081155": {"vr": "UI", "Value": [str(sop_instance)] if sop_instance else []},
    }
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    if comment:
        item["00000902"] = {"vr": "LO", "Value": [comment[:64]]}  # ErrorComment: LO, 64 chars
    return item


def _failed(part: Part, reason: int, comment: str) -> dict[str, Any]:
    """A FailedSOPSequence item, with the UIDs the part's file meta names (if any)."""
    return _sop_item(*file_meta_uids(part.body), reason=reason, comment=comment)


def instances(
    parts: list[Part],
    limits: UploadLimits,
    parsed: ParsedUpload,
    stored: list[tuple[Optional[str], Optional[str]]],
    failed: list[dict[str, Any]],
) -> Iterator[ScanUpload]:
    """The instances to store, each part checked on its own; a part that is not one, or is
    unreadable, a non-image or another modality, goes to ``failed`` (a FailedSOPSequence
    item), the others to ``stored`` (their UIDs) as they are yielded.

    Raises:
        TooLarge: an instance over a limit (bytes, frames, scans per job): the request is
            refused whole.
    """
    for index, part in enumerate(parts):
        name = f"instance-{index + 1}"
        reason = not_an_instance(part, name)
        if reason is not None:
            failed.append(_failed(part, CANNOT_UNDERSTAND, reason))
            continue
        skipped = len(parsed.skipped)
        try:
            uploads = list(iter_scans([(name, io.BytesIO(part.body))], limits, parsed))
        except (Malformed, Unsupported) as exc:
            failed.append(
                _failed(
                    part,
                    SOP_CLASS_NOT_SUPPORTED if isinstance(exc, Unsupported) else CANNOT_UNDERSTAND,
                    exc.detail,
                )
            )
            continue
        if len(parsed.skipped) > skipped:  # a report, another modality, ...
            failed.append(
                _failed(part, SOP_CLASS_NOT_SUPPORTED, f"{name}: {parsed.skipped[-1].reason}")
            )
        for upload in uploads:
            stored.append((upload.dicom[0].sop_class_uid, upload.dicom[0].sop_instance_uid))
            yield upload


def _stow_reply(description: str) -> Reply:
    return Reply(
        description,
        media={DICOM_JSON: {"schema": STOW_RESPONSE}},
        headers={"Location": "the job's URL (when an instance was stored)"},
    )


_SEQUENCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["vr", "Value"],
    "properties": {
        "vr": {"const": "SQ"},
        "Value": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
}
STOW_RESPONSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["00081199"],
    "description": "ReferencedSOPSequence (0008,1199): the stored instances; "
    "FailedSOPSequence (0008,1198): the others, each with its "
    "FailureReason (0008,1197)",
    "properties": {"00081199": _SEQUENCE, "00081198": _SEQUENCE},
}


@bp.post("/studies")
@requires("submit")
@operation(
    "DICOMweb STOW-RS: store instances in a job",
    query=StowQuery,
    body_media={
        'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"}
        }
    },
    responses={
        200: _stow_reply("Every instance stored"),
        202: _stow_reply("Some instances stored, the others failed"),
        409: _stow_reply("No instance stored (or, as a problem, the job named was cancelled)"),
    },
    errors=(404, 409, 413, 415, 503),
)
def store_instances() -> Response:
    """Store the instances in a new job (or ``?job=<id>``) and answer the STOW response."""
    svc = services()
    caller = actor("stow-rs")
    session = db_session()
    boundary = _boundary()
    parts = split_typed_parts(request.get_data(cache=False), boundary)
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
    part_key = new_id()[:12]
    limits = UploadLimits.from_settings(svc.settings)
    # An appended instance counts against MAX_SCANS_PER_JOB with the job's scans.
    parsed = ParsedUpload(count=job_scan_count(session, job.id) if job is not None else 0)
    stored: list[tuple[Optional[str], Optional[str]]] = []
    failed: list[dict[str, Any]] = []
    new_scans = store_uploads(
        svc.blobs,
        instances(parts, limits, parsed, stored, failed),
        (lambda i: svc.blobs.key_for(job_id, i))
        if job is None
        else (lambda i: svc.blobs.part_key(job_id, part_key, i)),
        scans_of,
        job_id if job is None else None,
    )
    if new_scans and job is None:
        job_service().submit(session, caller, job_id, new_scans, name="DICOMweb STOW-RS")
    elif new_scans and job is not None:
        session.rollback()  # the append's transaction begins with its locks
        job_service().append(session, caller, job, new_scans)
    log.info("job %s: STOW-RS stored %d instances, %d failed", job_id, len(stored), len(failed))
    body: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [_sop_item(*s) for s in stored]}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if stored else 409)
    headers = {"Location": url_for("jobs.get_job", job_id=job_id)} if new_scans else {}
    return Response(json.dumps(body), status=status, mimetype=DICOM_JSON, headers=headers)
