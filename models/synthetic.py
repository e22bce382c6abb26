"""Synthetic chest-CT-like slices: for parity calibration, tests and the benchmark.

They look like a slice (dark background, bright body ellipse, darker lungs, noise,
ground-glass-like patches) but carry no diagnosis; they exercise the pipeline only.
"""
from __future__ import annotations

import numpy as np


def ct_slice_array(size: int = 128, seed: int = 0, rgb: bool = False) -> np.ndarray:
    """A ``(size, size)`` uint8 grayscale slice, or ``(size, size, 3)`` tinted RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1
    lungs = (((x - 0.33) / 0.12) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1) | \
            (((x - 0.67) / 0.12) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1)
    pixels = np.where(body, 170.0, 10.0) - np.where(lungs, 130.0, 0.0)
    pixels += rng.normal(0, 12 + 4 * (seed % 5), pixels.shape)
    blobs = rng.integers(0, 4)
    for _ in range(blobs):  # ground-glass-like patches
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.65), rng.uniform(0.03, 0.08)
        pixels += 60 * (((x - cx) ** 2 + (y - cy) ** 2) < r * r)
    gray = np.clip(pixels, 0, 255).astype(np.uint8)
    if not rgb:
        return gray
    tint = np.stack([gray, np.clip(gray * 0.9, 0, 255), np.clip(gray * 0.8 + 20, 0, 255)], -1)
    return tint.astype(np.uint8)


def png_slice(size: int = 512, seed: int = 0) -> bytes:
    """A grayscale synthetic slice encoded as PNG."""
    import cv2

    ok, encoded = cv2.imencode(".png", ct_slice_array(size, seed))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return encoded.tobytes()
