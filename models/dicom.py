"""DICOM CT slices to model tensors: the windowed 8-bit grey slice
(:mod:`covidscan.dicom_pixels`), as RGB, through ``seed-v1`` unchanged.
"""

from __future__ import annotations

import numpy as np

from covidscan.dicom_pixels import MAX_INFLATED_BYTES, grey_slice
from models.preprocess import SEED_V1, preprocess_seed_v1


def preprocessing_id(window: tuple[float, float], base: str = SEED_V1) -> str:
    """The id recorded with a DICOM result, e.g. ``seed-v1+dicom-window(1500,-600)``."""
    width, level = (f"{v:g}" for v in window)
    return f"{base}+dicom-window({width},{level})"


def parse_window(text: str) -> tuple[float, float]:
    """``"W,L"`` → (width, level); raises ValueError naming what is wrong."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError(f"a DICOM window is WIDTH,LEVEL in Hounsfield units, got {text!r}")
    try:
        width, level = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"a DICOM window is two numbers WIDTH,LEVEL, got {text!r}") from None
    if not (np.isfinite(width) and np.isfinite(level)) or width <= 0:
        raise ValueError(f"a DICOM window's width must be a positive number, got {text!r}")
    return width, level


def load_dicom_seed_v1(
    data: bytes,
    frame: int,
    window: tuple[float, float],
    size: tuple[int, int] = (224, 224),
    max_bytes: int = MAX_INFLATED_BYTES,
) -> np.ndarray:
    """The tensor the model gets for one DICOM frame (``seed-v1`` on the windowed slice);
    a Deflated file inflates to at most ``max_bytes``.

    Raises:
        ImageDecodeError: see :func:`covidscan.dicom_pixels.grey_slice`.
    """
    grey = grey_slice(data, frame, window, max_bytes)
    return preprocess_seed_v1(grey, size)
