"""Synthetic CT-like slices and archives for tests and the benchmark."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image


def ct_slice(size: int = 128, seed: int = 0, mode: str = "L") -> Image.Image:
    """A chest-CT-like slice: dark background, bright body ellipse, darker lungs, noise."""
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
    if mode == "L":
        return Image.fromarray(gray, "L")
    tint = np.stack([gray, np.clip(gray * 0.9, 0, 255), np.clip(gray * 0.8 + 20, 0, 255)], -1)
    return Image.fromarray(tint.astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def png_bytes(size: int = 128, seed: int = 0, mode: str = "L") -> bytes:
    return encode(ct_slice(size, seed, mode), "PNG")


def corrupt_png(size: int = 128) -> bytes:
    """A PNG signature and header followed by a truncated stream: passes sniffing, fails decoding."""
    return png_bytes(size, seed=999)[:120]


def write_folder(folder: Path, count: int, size: int = 128, corrupt: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"slice_{i:03d}.png"
        path.write_bytes(png_bytes(size, seed=i))
        paths.append(path)
    for i in range(corrupt):
        path = folder / f"corrupt_{i}.png"
        path.write_bytes(corrupt_png(size))
        paths.append(path)
    return paths


def zip_bytes(entries: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()
