"""``GET /v1/scans/<scan_id>/thumbnail``: a small preview of a scan, made with Pillow (a
DICOM slice's with pydicom, in its model's window, as the model sees it).

Thumbnails are cached in the blob store beside the scan's bytes, so they are made
once and deleted with the job. A scan whose bytes cannot be decoded (or are gone), or
whose header declares more than ``MAX_SCAN_PIXELS`` pixels, or a DICOM slice the worker
would fail (a malformed modality LUT, whatever the error) gets a placeholder image rather
than an error: the page shows it in the scan's row. That failure is cached too,
so a bad scan is not decoded again on every request.
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache
from typing import Optional

from flask import Blueprint, Response
from PIL import Image, ImageDraw, UnidentifiedImageError

from api.audit import audit
from api.auth import owned_scan, requires
from api.extensions import db_session, services
from api.openapi import Reply, operation
from core.errors import IntakeError
from core.intake import IMAGE_TYPES, SNIFF_BYTES, sniff
from core.intake.image_header import read_header
from covidscan.dicom_pixels import MAX_INFLATED_BYTES, is_dicom
from db.blobs import BlobNotFound

log = logging.getLogger(__name__)
bp = Blueprint("thumbnails", __name__, url_prefix="/v1/scans")

THUMBNAIL_SIZE = 128
THUMBNAIL_SUFFIX = ".thumb.jpg"
FAILED_SUFFIX = ".thumb.failed"
# Pillow's 16-bit and 32-bit integer modes; scaled to 8 bits as OpenCV's imread does.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


class ThumbnailError(ValueError):
    """The bytes are not an image Pillow can decode."""


def _check_header(data: bytes, max_pixels: int) -> None:
    kind = sniff(data[:SNIFF_BYTES])
    if kind not in IMAGE_TYPES:
        raise ThumbnailError("not a PNG or JPEG image")
    try:
        header = read_header(data, IMAGE_TYPES[kind], "the scan")
    except IntakeError as exc:
        raise ThumbnailError(exc.detail) from None
    if header.pixels > max_pixels:
        raise ThumbnailError(
            f"{header.width}×{header.height} pixels is above the limit of "
            f"{max_pixels} (MAX_SCAN_PIXELS)"
        )


def make_thumbnail(data: bytes, max_pixels: int, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG no larger than ``size`` pixels on either side.

    Raises:
        ThumbnailError: the bytes cannot be decoded, or declare more than ``max_pixels``.
    """
    _check_header(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as source:
            source.thumbnail((size, size))  # decodes at reduced size where the format allows
            image: Image.Image = source
            if image.mode in WIDE_MODES:
                image = image.point(lambda value: value / 256)
            image = image.convert("RGB" if image.mode in COLOUR_MODES else "L")
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
    ) as exc:  # Pillow's plugins raise SyntaxError for malformed headers
        raise ThumbnailError(str(exc) or exc.__class__.__name__) from None
    return _jpeg(image)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def make_dicom_thumbnail(
    data: bytes,
    frame: int,
    window: tuple[float, float],
    max_pixels: int,
    modality: Optional[str] = None,
    size: int = THUMBNAIL_SIZE,
    max_bytes: int = MAX_INFLATED_BYTES,
) -> bytes:
    """A JPEG of one frame of a DICOM slice as the model sees it: in ``window`` (width,
    level in Hounsfield units), no larger than ``size`` pixels on either side.

    Raises:
        ThumbnailError: the header cannot be read or declares more than ``max_pixels``, a
            Deflated file inflates past ``max_bytes``, or the frame cannot be decoded or
            windowed (a malformed rescale slope, padding value…): the reason, as the
            worker gives it, whatever the error.
    """
    from core.intake.dicom_header import NotAnImage, read_dicom_header
    from covidscan.dicom_pixels import grey_slice, inflate
    from covidscan.image_errors import ImageDecodeError

    try:  # inflated here first, within the limit: the header reader would inflate it all
        data = inflate(data, max_bytes)
        # the modality the upload accepted it as (the job's allow_modality)
        header = read_dicom_header(data, "the scan", modalities=(modality or "CT",))
        if header.pixels > max_pixels:
            raise ThumbnailError(
                f"{header.width}×{header.height} pixels is above the limit "
                f"of {max_pixels} (MAX_SCAN_PIXELS)"
            )
        grey = grey_slice(data, frame, window, max_bytes)
    except NotAnImage as exc:
        raise ThumbnailError(str(exc)) from None
    except IntakeError as exc:
        raise ThumbnailError(exc.detail) from None
    except (ThumbnailError, ImageDecodeError) as exc:
        raise ThumbnailError(str(exc)) from None
    except Exception as exc:
        # Named by its type only: a decoder's message may quote the file's values.
        log.warning("a DICOM thumbnail failed (%s)", type(exc).__name__)
        raise ThumbnailError(f"could not decode the scan ({type(exc).__name__})") from None
    image = Image.fromarray(grey)
    image.thumbnail((size, size))
    return _jpeg(image)


@lru_cache(maxsize=1)
def placeholder_png(size: int = THUMBNAIL_SIZE) -> bytes:
    """A grey square with a cross: what a scan without a preview shows."""
    image = Image.new("L", (size, size), 225)
    draw = ImageDraw.Draw(image)
    margin = size // 4
    draw.line((margin, margin, size - margin, size - margin), fill=90, width=max(2, size // 32))
    draw.line((margin, size - margin, size - margin, margin), fill=90, width=max(2, size // 32))
    draw.rectangle((0, 0, size - 1, size - 1), outline=150)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_response(data: bytes, mimetype: str, cache_seconds: int) -> Response:
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = f"private, max-age={cache_seconds}"
    return response


def _window_of(scan) -> tuple[float, float]:
    """The DICOM window of the model the scan's job is pinned to, else the lung window."""
    from covidscan.dicom_pixels import LUNG_WINDOW
    from db.models import Job, Model

    session = db_session()
    job = session.get(Job, scan.job_id)
    model = session.get(Model, job.model_id) if job is not None and job.model_id else None
    if (
        model is not None
        and model.dicom_window_width is not None
        and model.dicom_window_level is not None
    ):
        return model.dicom_window_width, model.dicom_window_level
    return LUNG_WINDOW


@bp.get("/<scan_id>/thumbnail")
@requires("read")
@operation(
    "A scan's thumbnail",
    errors=(404,),
    responses={
        200: Reply(
            "A JPEG at most 128 px on a side, or a PNG placeholder for a scan without a preview",
            media={"image/jpeg": {"schema": {}}, "image/png": {"schema": {}}},
        )
    },
)
def get_thumbnail(scan_id: str) -> Response:
    scan = owned_scan(scan_id)
    audit("thumbnail.view", scan.job_id, {"scan_id": scan.id})
    svc = services()
    blobs = svc.blobs
    # The frames of a multi-frame DICOM file share its blob, each with a thumbnail of its own.
    base = scan.blob_key if scan.frame is None else f"{scan.blob_key}.f{scan.frame}"
    cache_key = base + THUMBNAIL_SUFFIX
    for key, mimetype in ((cache_key, "image/jpeg"), (base + FAILED_SUFFIX, None)):
        try:
            cached = blobs.get(key)
        except BlobNotFound:
            continue
        if mimetype is None:
            return _image_response(placeholder_png(), "image/png", 3600)
        return _image_response(cached, mimetype, 86400)
    try:
        data = blobs.get(scan.blob_key)
        if is_dicom(data):
            thumbnail = make_dicom_thumbnail(
                data,
                scan.frame or 0,
                _window_of(scan),
                svc.settings.max_scan_pixels,
                scan.modality,
                max_bytes=svc.settings.max_scan_bytes,
            )
        else:
            thumbnail = make_thumbnail(data, svc.settings.max_scan_pixels)
    except BlobNotFound as exc:
        log.info("scan %s has no preview: %s", scan_id, exc)
        return _image_response(placeholder_png(), "image/png", 60)
    except ThumbnailError as exc:
        log.info("scan %s has no preview: %s", scan_id, exc)
        blobs.put(base + FAILED_SUFFIX, str(exc).encode())
        return _image_response(placeholder_png(), "image/png", 3600)
    blobs.put(cache_key, thumbnail)
    return _image_response(thumbnail, "image/jpeg", 86400)
