"""Preprocessing ``seed-v1``: the original app's, reproduced exactly.

The original read each slice with ``cv2.imread`` (BGR, 8-bit, 3 channels),
converted it to RGB, resized it with ``cv2.resize`` (bilinear, no antialiasing)
and divided by 255. Any other preprocessing must get another id.
"""
from __future__ import annotations

import cv2
import numpy as np

SEED_V1 = "seed-v1"


class ImageDecodeError(ValueError):
    """The bytes of a scan are not an image OpenCV can decode."""


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode PNG or JPEG bytes to an ``(H, W, 3)`` uint8 RGB array as ``cv2.imread`` would.

    Raises:
        ImageDecodeError: the bytes are empty, truncated or not a supported image.
    """
    if not data:
        raise ImageDecodeError("the file is empty")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # some malformed files make OpenCV raise instead of returning None
        raise ImageDecodeError(f"could not decode image: {exc.msg or exc}") from None
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(
            "could not decode image: the file is truncated or corrupt, or not a PNG or JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def preprocess_seed_v1(rgb: np.ndarray, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Resize an RGB image to ``size`` (height, width) and scale to [0, 1] as float32."""
    height, width = size
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    # The original divided a uint8 array by 255 in float64; the model then ran in float32.
    return (resized / 255.0).astype(np.float32)


def load_seed_v1(data: bytes, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Decode and preprocess one scan; raises :class:`ImageDecodeError` on bad bytes."""
    return preprocess_seed_v1(decode_rgb(data), size)
