"""Preprocessing ``seed-v1``: the original app's, reproduced exactly.

The original read each slice with ``cv2.imread`` (BGR, 8-bit, 3 channels),
converted it to RGB, resized it with ``cv2.resize`` (bilinear, no antialiasing)
and divided by 255. Any other preprocessing must get another id.

Decoding is capped: OpenCV refuses an image of more than ``OPENCV_IO_MAX_IMAGE_PIXELS``
pixels before allocating it, but reads that variable once, when ``cv2`` is first
imported. :func:`configure_decoding` sets it from ``MAX_SCAN_PIXELS`` and must run
before then; this module imports ``cv2`` only when it decodes, and with the default cap
when nothing configured it.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import numpy as np

from covidscan.image_errors import ImageDecodeError

SEED_V1 = "seed-v1"
OPENCV_PIXELS_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 4096 * 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNDECODABLE = "could not decode image: the file is truncated or corrupt, or not a PNG or JPEG"


def configure_decoding(max_pixels: int) -> None:
    """Cap how many pixels OpenCV decodes in this process (``MAX_SCAN_PIXELS``).

    Raises:
        RuntimeError: ``cv2`` was already imported with another cap, which it keeps.
    """
    if "cv2" in sys.modules and os.environ.get(OPENCV_PIXELS_VARIABLE) != str(max_pixels):
        raise RuntimeError(
            f"OpenCV was imported before its decoding cap was set to {max_pixels} "
            f"pixels; configure decoding first"
        )
    os.environ[OPENCV_PIXELS_VARIABLE] = str(max_pixels)


def _cv2() -> ModuleType:
    """``cv2``, imported with a decoding cap in place (the default when none was set)."""
    if "cv2" not in sys.modules:
        os.environ.setdefault(OPENCV_PIXELS_VARIABLE, str(DEFAULT_MAX_PIXELS))
    import cv2

    return cv2


def _decode_failure(exc: Exception) -> ImageDecodeError:
    message = getattr(exc, "msg", "") or str(exc)
    if "CV_IO_MAX_IMAGE" in message or "validateInputImageSize" in str(exc):
        cap = os.environ.get(OPENCV_PIXELS_VARIABLE, "the decoder's")
        return ImageDecodeError(
            f"the image is larger than the limit of {cap} pixels "
            "(MAX_SCAN_PIXELS); it was not decoded"
        )
    return ImageDecodeError(f"could not decode image: {message}")


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode PNG or JPEG bytes to an ``(H, W, 3)`` uint8 RGB array as ``cv2.imread`` would.

    Raises:
        ImageDecodeError: the bytes are empty, truncated or not a supported image.
    """
    cv2 = _cv2()
    bgr = _imdecode(data, cv2.IMREAD_COLOR)
    try:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    except cv2.error as exc:
        raise _decode_failure(exc) from None


def _imdecode(data: bytes, flags: int) -> np.ndarray:
    """``cv2.imdecode`` with every way it fails as an :class:`ImageDecodeError`."""
    if not data:
        raise ImageDecodeError("the file is empty")
    cv2 = _cv2()
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:  # malformed or oversized files make OpenCV raise
        raise _decode_failure(exc) from None
    if image is None or image.size == 0:
        raise ImageDecodeError(UNDECODABLE)
    return image


def preprocess_seed_v1(rgb: np.ndarray, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Resize an RGB image to ``size`` (height, width) and scale to [0, 1] as float32.

    A 2-D (grey) image gives what its RGB copy (the grey in all three channels) gives:
    the resize and the scaling work on each channel alone, so they run once and the
    result is repeated.
    """
    cv2 = _cv2()
    height, width = size
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    # The original divided a uint8 array by 255 in float64; the model then ran in float32.
    scaled = (resized / 255.0).astype(np.float32)
    return np.repeat(scaled[:, :, None], 3, axis=2) if scaled.ndim == 2 else scaled


def is_grey8_png(data: bytes) -> bool:
    """The PNG header says 8-bit greyscale without alpha (colour type 0, bit depth 8)."""
    return (
        len(data) >= 26
        and data[:8] == PNG_SIGNATURE
        and data[12:16] == b"IHDR"
        and data[24] == 8
        and data[25] == 0
    )


def load_seed_v1(data: bytes, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Decode and preprocess one scan; raises :class:`ImageDecodeError` on bad bytes.

    An 8-bit greyscale PNG (what CT slices usually are) is decoded as one channel: the
    3-channel read the original made only repeats it, so the tensor is the same, for
    about a quarter less work. Every other image is read as the original read it. Every
    OpenCV error, in decoding or in resizing, becomes an :class:`ImageDecodeError`: the
    scan fails alone with the reason.
    """
    cv2 = _cv2()
    image = _imdecode(data, cv2.IMREAD_GRAYSCALE) if is_grey8_png(data) else decode_rgb(data)
    try:
        return preprocess_seed_v1(image, size)
    except cv2.error as exc:
        raise _decode_failure(exc) from None
