"""DICOM pixels to an 8-bit grey slice: stored values → Hounsfield units → window.

Shared by the worker (:mod:`models.dicom`, which feeds the slice to the model) and the
API (a DICOM scan's thumbnail shows what the model saw). Numpy and pydicom only.

One frame is decoded at a time (pydicom's ``pixel_array(index=…)``), with the pixel-data
plugins installed (pylibjpeg-openjpeg, pylibjpeg-rle, and on workers python-gdcm; see
README). Stored values equal to the padding value (``PixelPaddingValue``, up to
``PixelPaddingRangeLimit``) are outside the patient: they become the bottom of the window.
The modality LUT (``RescaleSlope``/``RescaleIntercept``) gives Hounsfield units; the window
maps ``[level - width/2, level + width/2]`` onto 0…255, rounded to 8 bits like an exported
PNG slice, and MONOCHROME1 (higher value = darker) is inverted.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from covidscan.image_errors import ImageDecodeError

DICOM_MAGIC = b"DICM"
LUNG_WINDOW = (1500.0, -600.0)
"""(width, level) in Hounsfield units: the default window for chest CT."""


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    return data[128:132] == DICOM_MAGIC


def _padding_mask(dataset, stored: np.ndarray) -> Optional[np.ndarray]:
    value = dataset.get("PixelPaddingValue")
    if value is None:
        return None
    limit = dataset.get("PixelPaddingRangeLimit", value)
    low, high = min(value, limit), max(value, limit)
    return (stored >= low) & (stored <= high)


def window_to_grey(hu: np.ndarray, window: tuple[float, float],
                   padding: Optional[np.ndarray] = None, monochrome1: bool = False) -> np.ndarray:
    """Hounsfield units → 8-bit grey through ``window`` (width, level).

    Padding pixels become black (air) whatever the photometric interpretation.
    """
    width, level = window
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


def read_frame(data: bytes, frame: int = 0):
    """Parse a DICOM file's header and decode one frame: (header, stored values).

    Only that frame's pixel data is read and decoded, so each frame of a large
    multi-frame file costs one frame, not the whole file.

    Raises:
        ImageDecodeError: not DICOM, no pixel data, a frame out of range, a colour image,
            or a transfer syntax no installed plugin decodes (the message names it).
    """
    import pydicom
    from pydicom import config
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    # pydicom's value checks warn quoting values (a malformed birth date): keep them out of logs
    config.settings.reading_validation_mode = config.IGNORE
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageDecodeError(f"could not read the DICOM file: {exc}") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise ImageDecodeError(f"frame {frame} is out of range (the file has {frames})")
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise ImageDecodeError("the DICOM image is not greyscale (SamplesPerPixel is not 1)")
    try:
        stored = pixel_array(io.BytesIO(data), index=frame if frames > 1 else None, raw=True)
    except AttributeError as exc:
        if "no pixel data" in str(exc):
            raise ImageDecodeError("the DICOM object holds no pixel data") from None
        raise ImageDecodeError(f"could not decode {_syntax_name(dataset)}: "
                               f"{_one_line(exc)}") from None
    except NotImplementedError as exc:
        raise ImageDecodeError(f"{_syntax_name(dataset)} cannot be decoded here "
                               f"({_one_line(exc)})") from None
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, EOFError) as exc:
        raise ImageDecodeError(f"could not decode {_syntax_name(dataset)}: "
                               f"{_one_line(exc)}") from None
    return dataset, np.asarray(stored)


def _rescale(dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept): a frame's own, else the shared functional group's (enhanced
    multi-frame images keep them there), else the image's."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):
        sequence = dataset.get(groups)
        if sequence and len(sequence) > index:
            transform = sequence[index].get("PixelValueTransformationSequence")
            if transform and "RescaleSlope" in transform[0]:
                return float(transform[0].RescaleSlope), float(transform[0].RescaleIntercept)
    slope = dataset.get("RescaleSlope")
    intercept = dataset.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0,
            float(intercept) if intercept not in (None, "") else 0.0)


def hounsfield(dataset, stored: np.ndarray, frame: int = 0) -> np.ndarray:
    """Stored values → Hounsfield units with the modality LUT (slope and intercept)."""
    slope, intercept = _rescale(dataset, frame)
    return stored.astype(np.float64) * slope + intercept


def grey_slice(data: bytes, frame: int, window: tuple[float, float]) -> np.ndarray:
    """One frame of a DICOM file as the 8-bit grey slice a reader would see in ``window``."""
    dataset, stored = read_frame(data, frame)
    if stored.ndim != 2:
        raise ImageDecodeError(f"expected a 2-D frame, got shape {stored.shape}")
    monochrome1 = str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    return window_to_grey(hounsfield(dataset, stored, frame), window,
                          _padding_mask(dataset, stored), monochrome1)
