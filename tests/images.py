"""Synthetic CT-like slices and archives for the tests."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from models.synthetic import corrupt_png, ct_slice_array


def ct_slice(size: int = 128, seed: int = 0, mode: str = "L") -> Image.Image:
    """A chest-CT-like slice (see :func:`models.synthetic.ct_slice_array`) as a Pillow image."""
    if mode == "L":
        return Image.fromarray(ct_slice_array(size, seed), "L")
    return Image.fromarray(ct_slice_array(size, seed, rgb=True), "RGB")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def png_bytes(size: int = 128, seed: int = 0, mode: str = "L") -> bytes:
    return encode(ct_slice(size, seed, mode), "PNG")


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
