"""A series' results as DICOM objects, made from what SQL and the blob store hold: its SR,
and its Grad-CAM overlay as a Secondary Capture.

The HTTP route (``GET /v1/jobs/<id>/series/<uid>/sr``) and an export to a PACS call the
same functions; each raises the core's domain errors (:mod:`core.errors`), which every
adapter maps once. An export passes its own UIDs so that every attempt makes the same
instances (a PACS that got one replaces it instead of keeping two).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from sqlalchemy import select

from core.deidentify import deidentified
from core.errors import Conflict, Gone, Malformed, NotFound, Unusable
from core.reports.secondary_capture import OVERLAY_SERIES_NUMBER, build_overlay, patient_orientation
from core.reports.sr import (
    RESULTS_SERIES_NUMBER,
    UID_PATTERN,
    EvidenceError,
    SeriesFinding,
    build_report,
    evidence_header,
    slice_header,
)
from db.blobs import BlobNotFound
from db.explanations import GRADCAM
from db.models import Explanation, Job, Model, Scan, ScanStatus
from db.series import Series, find_series, min_series_slices

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.orm import Session

    from db.blobs import BlobStore

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("COVID", "NonCOVID")


@dataclass(frozen=True)
class SeriesOverlays:
    """A series' overlays (Part 10 Secondary Capture instances, at most one today: the
    slice with the highest P(COVID) among those with a Grad-CAM), or why there is none."""

    documents: tuple[bytes, ...]
    scan_ids: tuple[str, ...]  # the slices they show, in the same order
    skipped: Optional[str] = None


def class_names(session: Session, job: Job) -> tuple[str, str]:
    """(positive, other) class names of the job's model, for a series' label."""
    model = session.get(Model, job.model_id) if job.model_id else None
    if model is None:
        return DEFAULT_CLASSES
    others = [c for c in model.classes if c != model.positive_class]
    return model.positive_class, (others[0] if len(others) == 1 else f"not {model.positive_class}")


def checked_series_uid(series_uid: str) -> str:
    """``series_uid``, when it is a UID.

    Raises:
        Malformed: it is not digits and dots, at most 64 characters.
    """
    if not UID_PATTERN.fullmatch(series_uid):
        raise Malformed("a Series Instance UID is digits and dots, at most 64 characters")
    return series_uid


def series_with_result(session: Session, job: Job, series_uid: str) -> Series:
    """The job's series ``series_uid``, which has a result.

    Raises:
        Malformed: ``series_uid`` is not a UID.
        NotFound: the job has no such series.
        Conflict: the series has too few slices for a result, or none of them has one yet.
    """
    checked_series_uid(series_uid)
    series = find_series(
        session, job.id, job.series_rule, series_uid, min_series_slices(job.intended_use)
    )
    if series is None:
        raise NotFound(f"job {job.id} has no DICOM series {series_uid!r}")
    if series.skipped is not None:
        raise Conflict(f"series {series_uid} has no result: {series.skipped}")
    if not succeeded(series) or series.probability_covid is None:
        raise Conflict(f"no slice of series {series_uid} has a result yet")
    return series


def succeeded(series: Series) -> list[Scan]:
    return [s for s in series.slices if s.status == ScanStatus.SUCCEEDED]


def series_finding(session: Session, job: Job, series: Series) -> SeriesFinding:
    """What the series' objects state: its P(COVID), label, rule and model."""
    positive, negative = class_names(session, job)
    first = succeeded(series)[0]
    return SeriesFinding(
        series.probability_covid or 0.0,
        series.label(positive, negative) == positive,
        series.rule,
        first.model_name or "unknown",
        first.model_version or "unknown",
        first.model_sha256 or "",
        first.preprocessing or "",
    )


def series_document(
    session: Session,
    blobs: BlobStore,
    max_scan_bytes: int,
    job: Job,
    series_uid: str,
    *,
    sop_instance_uid: Optional[str] = None,
    series_instance_uid: Optional[str] = None,
    series_number: int = RESULTS_SERIES_NUMBER,
) -> bytes:
    """The series' result as a Comprehensive 3D SR (Part 10 bytes), referencing each slice
    that has a result; new UIDs for the report and its series unless given.

    Raises:
        Malformed, NotFound, Conflict: as :func:`series_with_result`.
        Gone: the stored slices were deleted.
        Unusable: a slice's header cannot be referenced by a report.
    """
    series = series_with_result(session, job, series_uid)
    done = succeeded(series)
    finding = series_finding(session, job, series)
    frames: dict[str, list[int]] = {}  # only instances with a UID can be referenced
    for scan in done:
        if scan.frame is not None and scan.sop_instance_uid is not None:
            frames.setdefault(scan.sop_instance_uid, []).append(scan.frame + 1)
    with _reporting(job, series_uid):
        evidence = [
            evidence_header(blobs.get(key), max_scan_bytes)
            for key in dict.fromkeys(s.blob_key for s in done)
        ]
        return build_report(
            evidence,
            finding,
            frames,
            series_instance_uid=series_instance_uid,
            sop_instance_uid=sop_instance_uid,
            series_number=series_number,
        )


def series_overlays(
    session: Session,
    blobs: BlobStore,
    max_scan_bytes: int,
    job: Job,
    series_uid: str,
    *,
    series_instance_uid: str,
    sop_instance_uid: Optional[str] = None,
    series_number: int = OVERLAY_SERIES_NUMBER,
    instance_number: int = 1,
) -> SeriesOverlays:
    """The Grad-CAM overlay of the series' slice with the highest P(COVID) among those whose
    explanation is done, as a Secondary Capture in ``series_instance_uid``; none, with the
    reason, when no slice of the series has one (explanations are made on request).

    Give the overlays a series of their own in the study, not the SR's: every instance of
    a series shares its series attributes (PS3.3 A.1.2), and the SR's Modality is ``SR``,
    this image's ``OT``. ``sop_instance_uid``: the same on every export attempt (a new one
    when None); ``instance_number``: the image's number in its series.

    Raises:
        Malformed, NotFound, Conflict: as :func:`series_with_result`.
        Gone: the stored slice was deleted.
        Unusable: its header cannot be referenced, or its stored overlay cannot be read.
    """
    from pydicom.uid import generate_uid

    series = series_with_result(session, job, series_uid)
    done = {scan.id: scan for scan in succeeded(series)}
    explained = session.scalars(
        select(Explanation).where(
            Explanation.scan_id.in_(list(done)),
            Explanation.method == GRADCAM,
            Explanation.status == ScanStatus.SUCCEEDED,
        )
    ).all()
    if not explained:
        return SeriesOverlays(
            (),
            (),
            f"no slice of series {series_uid} has a Grad-CAM explanation (one is made "
            "for a scan when asked for)",
        )
    order = {scan_id: index for index, scan_id in enumerate(done)}  # along the patient axis
    shown = min(
        explained,
        key=lambda e: (-(done[e.scan_id].probability_covid or 0.0), order[e.scan_id]),
    )
    scan = done[shown.scan_id]
    pixels = _overlay_pixels(shown.overlay_png, series_uid)
    with _reporting(job, series_uid, "overlay"):
        header = slice_header(blobs.get(scan.blob_key), max_scan_bytes)
        document = build_overlay(
            deidentified(header),
            pixels,
            series_finding(session, job, series),
            series_instance_uid=series_instance_uid,
            sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=instance_number,
            series_number=series_number,
            frame=None if scan.frame is None else scan.frame + 1,
            orientation=patient_orientation(header),
            slice_probability=scan.probability_covid,
        )
    return SeriesOverlays((document,), (scan.id,))


@contextmanager
def _reporting(job: Job, series_uid: str, what: str = "report") -> Iterator[None]:
    """Map what reading the slices and building the object can raise to domain errors."""
    try:
        yield
    except BlobNotFound:
        raise Gone(f"the stored slices of series {series_uid} are gone") from None
    except EvidenceError as exc:
        raise Unusable(f"no {what} can be made for series {series_uid}: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # highdicom refuses what it cannot copy or reference (a SOP class it does not know,
        # a malformed attribute); named by type only, its message may quote the header.
        log.warning("a %s for a series of job %s failed (%s)", what, job.id, type(exc).__name__)
        raise Unusable(
            f"no {what} can be made for series {series_uid}: its slices' "
            f"headers lack what a DICOM {'SR' if what == 'report' else 'image'} must copy "
            f"or reference ({type(exc).__name__})"
        ) from None


def _overlay_pixels(png: Optional[bytes], series_uid: str) -> np.ndarray:
    """The stored overlay PNG as ``(rows, columns, 3)`` uint8 RGB."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png or b"")) as picture:
            return np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Unusable(
            f"no overlay can be made for series {series_uid}: its stored Grad-CAM picture "
            f"cannot be read ({type(exc).__name__})"
        ) from None
