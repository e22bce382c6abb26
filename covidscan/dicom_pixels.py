"""DICOM pixels to an 8-bit grey slice: stored values → Hounsfield units → window.

Shared by the worker (:mod:`models.dicom`, which feeds the slice to the model) and the
API (a DICOM scan's thumbnail shows what the model saw). Numpy and pydicom only.

One frame is decoded at a time (pydicom's ``pixel_array(index=…)``), with the pixel-data
plugins installed (pylibjpeg-openjpeg, pylibjpeg-rle, and on workers python-gdcm; see
docs/use/dicom.md). Stored values equal to the padding value (``PixelPaddingValue``, up to
``PixelPaddingRangeLimit``) are outside the patient: they become the bottom of the window.
The modality LUT (``RescaleSlope``/``RescaleIntercept``) gives Hounsfield units; the window
maps ``[level - width/2, level + width/2]`` onto 0…255, rounded to 8 bits like an exported
PNG slice, and MONOCHROME1 (higher value = darker) is inverted.

Everything a file can get wrong is an :class:`ImageDecodeError` naming the attribute: a
rescale slope that is not one finite number or is 0, a padding value with two values,
Hounsfield units that overflow. A slice like that fails alone with the reason; it is never
"classified" from an all-black or all-white window. A Deflated dataset is inflated here,
at most ``max_bytes`` of it (pydicom's own reader inflates without a limit).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Sequence
from typing import Optional

import numpy as np

from covidscan.image_errors import ImageDecodeError

DICOM_MAGIC = b"DICM"
DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_INFLATED_BYTES = 64 * 1024 * 1024
INFLATE_CHUNK = 1024 * 1024
"""How far a Deflated dataset may inflate when the caller names no limit (the default
``MAX_SCAN_BYTES``: the size the file could have had uncompressed)."""
LUNG_WINDOW = (1500.0, -600.0)
"""(width, level) in Hounsfield units: the default window for chest CT."""


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    return data[128:132] == DICOM_MAGIC


def _optional_number(owner, keyword: str) -> Optional[float]:
    """The attribute ``keyword`` of ``owner`` as one finite number; None when it is absent
    or empty.

    Raises:
        ImageDecodeError: it holds several values, or something that is not a finite number
            (the message names the attribute, never the value).
    """
    try:
        value = owner.get(keyword)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ImageDecodeError(f"{keyword} cannot be read ({type(exc).__name__})") from None
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # multi-valued
        if len(value) != 1:
            raise ImageDecodeError(f"{keyword} must be one number, it holds {len(value)} values")
        value = value[0]
    try:
        number = float(value)
    except (ValueError, TypeError, OverflowError):
        raise ImageDecodeError(f"{keyword} is not a number") from None
    if not math.isfinite(number):
        raise ImageDecodeError(f"{keyword} is not a finite number (NaN or infinite)")
    return number


def _number(owner, keyword: str, default: float) -> float:
    """:func:`_optional_number`, ``default`` when the attribute is absent or empty."""
    number = _optional_number(owner, keyword)
    return default if number is None else number


def _whole_number(owner, keyword: str, default: int) -> int:
    number = _number(owner, keyword, default)
    if number != int(number):
        raise ImageDecodeError(f"{keyword} is not a whole number")
    return int(number)


def _padding_mask(dataset, stored: np.ndarray) -> Optional[np.ndarray]:
    value = _optional_number(dataset, "PixelPaddingValue")
    if value is None:
        return None
    limit = _number(dataset, "PixelPaddingRangeLimit", value)
    low, high = min(value, limit), max(value, limit)
    return (stored >= low) & (stored <= high)


def window_to_grey(
    hu: np.ndarray,
    window: tuple[float, float],
    padding: Optional[np.ndarray] = None,
    monochrome1: bool = False,
) -> np.ndarray:
    """Hounsfield units → 8-bit grey through ``window`` (width, level).

    Padding pixels become black (air) whatever the photometric interpretation.
    """
    width, level = window
    if not (math.isfinite(width) and math.isfinite(level)) or width <= 0:
        raise ImageDecodeError(
            f"the window must be a positive finite width and a finite "
            f"level, got {width:g},{level:g}"
        )
    scaled = np.clip((hu.astype(np.float64) - (level - width / 2.0)) / width, 0.0, 1.0)
    grey = np.rint(scaled * 255.0).astype(np.uint8)
    if monochrome1:
        grey = 255 - grey
    if padding is not None:
        grey[padding] = 0
    return grey


def _syntax_name(dataset) -> str:
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        return "an unknown transfer syntax"
    return f"transfer syntax {syntax.name} ({syntax})"


def _one_line(exc: Exception, limit: int = 400) -> str:
    """pydicom's multi-line reasons (one per plugin tried) on one line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _inflate_body(deflated: memoryview, max_bytes: int) -> bytearray:
    """A raw deflate stream inflated a chunk at a time, refused as soon as it passes
    ``max_bytes`` (so refusing a bomb costs about ``max_bytes``, not what it declares)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = bytearray()
    pending: bytes | memoryview = deflated
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break  # the stream ends early: the dataset's reader says what is missing
            body += chunk
            if len(body) > max_bytes:
                raise ImageDecodeError(
                    f"the Deflated dataset inflates to more than "
                    f"{max_bytes} bytes (MAX_SCAN_BYTES); it was not decoded"
                )
    except zlib.error:
        raise ImageDecodeError("the Deflated dataset's deflate stream is corrupt") from None
    return body


def inflate(data: bytes, max_bytes: int = MAX_INFLATED_BYTES) -> bytes:
    """A Deflated Explicit VR Little Endian file as the same file in Explicit VR Little
    Endian, inflating at most ``max_bytes``; any other file unchanged.

    Raises:
        ImageDecodeError: the file meta cannot be read, the deflate stream is corrupt, or
            it inflates to more than ``max_bytes`` (the message names the limit).
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    if not is_dicom(data):  # not Part 10: pydicom's reader refuses it, with its reason
        return data
    source = io.BytesIO(data)
    try:
        read_preamble(source, force=False)
        meta = _read_file_meta_info(source)
    except (
        InvalidDicomError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        OSError,
        AttributeError,
    ) as exc:
        raise ImageDecodeError(
            f"could not read the DICOM file meta ({type(exc).__name__})"
        ) from None
    if str(meta.get("TransferSyntaxUID", "")).strip("\0 ") != DEFLATED:
        return data
    body = _inflate_body(memoryview(data)[source.tell() :], max_bytes)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(data[:132])
    write_file_meta_info(out, meta, enforce_standard=False)
    out.write(body)
    return out.getvalue()


def read_frame(data: bytes, frame: int = 0, max_bytes: int = MAX_INFLATED_BYTES):
    """Parse a DICOM file's header and decode one frame: (header, stored values).

    Only that frame's pixel data is read and decoded, so each frame of a large
    multi-frame file costs one frame, not the whole file. A Deflated file is inflated
    first, to at most ``max_bytes``.

    Raises:
        ImageDecodeError: not DICOM, no pixel data, a frame out of range, a colour image,
            a malformed image attribute (named), a Deflated file over ``max_bytes``, or a
            transfer syntax no installed plugin decodes (the message names it).
    """
    import pydicom
    from pydicom import config
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    # pydicom's value checks warn quoting values (a malformed birth date): keep them out of logs
    config.settings.reading_validation_mode = config.IGNORE
    data = inflate(data, max_bytes)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageDecodeError(f"could not read the DICOM file: {exc}") from None
    frames = _whole_number(dataset, "NumberOfFrames", 1) or 1
    if not 0 <= frame < frames:
        raise ImageDecodeError(f"frame {frame} is out of range (the file has {frames})")
    if _whole_number(dataset, "SamplesPerPixel", 1) != 1:
        raise ImageDecodeError("the DICOM image is not greyscale (SamplesPerPixel is not 1)")
    photometric = str(dataset.get("PhotometricInterpretation") or "MONOCHROME2").strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(
            f"the DICOM image is not greyscale (PhotometricInterpretation "
            f"is {photometric[:16]!r}, not MONOCHROME1 or MONOCHROME2)"
        )
    try:
        stored = pixel_array(io.BytesIO(data), index=frame if frames > 1 else None, raw=True)
    except AttributeError as exc:
        if "no pixel data" in str(exc):
            raise ImageDecodeError("the DICOM object holds no pixel data") from None
        raise ImageDecodeError(
            f"could not decode {_syntax_name(dataset)}: {_one_line(exc)}"
        ) from None
    except NotImplementedError as exc:
        raise ImageDecodeError(
            f"{_syntax_name(dataset)} cannot be decoded here ({_one_line(exc)})"
        ) from None
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, EOFError) as exc:
        raise ImageDecodeError(
            f"could not decode {_syntax_name(dataset)}: {_one_line(exc)}"
        ) from None
    return dataset, np.asarray(stored)


def _rescale(dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept): a frame's own, else the shared functional group's (enhanced
    multi-frame images keep them there), else the image's.

    Raises:
        ImageDecodeError: either is not one finite number, or the slope is 0 (every pixel
            would get the same value).
    """
    owner = dataset
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        sequence = dataset.get(groups)
        if sequence and len(sequence) > index:
            transform = sequence[index].get("PixelValueTransformationSequence")
            if transform and "RescaleSlope" in transform[0]:
                owner = transform[0]
                break
    slope = _number(owner, "RescaleSlope", 1.0)
    intercept = _number(owner, "RescaleIntercept", 0.0)
    if slope == 0:
        raise ImageDecodeError("RescaleSlope is 0: every pixel would have the same value")
    return slope, intercept


def hounsfield(dataset, stored: np.ndarray, frame: int = 0) -> np.ndarray:
    """Stored values → Hounsfield units with the modality LUT (slope and intercept).

    Raises:
        ImageDecodeError: see :func:`_rescale`; or the units overflow to infinity.
    """
    slope, intercept = _rescale(dataset, frame)
    with np.errstate(over="ignore", invalid="ignore"):
        hu = stored.astype(np.float64) * slope + intercept
    if not np.isfinite(hu).all():
        raise ImageDecodeError(
            "RescaleSlope and RescaleIntercept give Hounsfield units beyond any finite number"
        )
    return hu


def grey_slice(
    data: bytes, frame: int, window: tuple[float, float], max_bytes: int = MAX_INFLATED_BYTES
) -> np.ndarray:
    """One frame of a DICOM file as the 8-bit grey slice a reader would see in ``window``.

    Raises:
        ImageDecodeError: see :func:`read_frame` and :func:`hounsfield`.
    """
    dataset, stored = read_frame(data, frame, max_bytes)
    if stored.ndim != 2:
        raise ImageDecodeError(f"expected a 2-D frame, got shape {stored.shape}")
    monochrome1 = str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    return window_to_grey(
        hounsfield(dataset, stored, frame), window, _padding_mask(dataset, stored), monochrome1
    )
