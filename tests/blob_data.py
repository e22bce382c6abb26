"""A learnable synthetic two-class set: slices with bright blobs versus slices without."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blob_slice(size: int, seed: int, blobs: bool) -> Image.Image:
    """A noisy grey ellipse on black; with ``blobs``, four to six bright round patches in it."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((size, size)) / size
    inside = ((cols - 0.5) / 0.4) ** 2 + ((rows - 0.5) / 0.3) ** 2 < 1
    pixels = 90.0 * inside + rng.normal(0, 10, (size, size))
    for _ in range(rng.integers(4, 7) if blobs else 0):
        row, col = rng.uniform(0.35, 0.65), rng.uniform(0.25, 0.75)
        radius = rng.uniform(0.05, 0.09)
        pixels += 150 * (((cols - col) ** 2 + (rows - row) ** 2) < radius**2)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def write_blob_dataset(
    root: Path, per_class: int, size: int = 64, folders: tuple[str, str] = ("COVID", "non-COVID")
) -> Path:
    """Two class folders of PNG slices: the first class carries bright blobs, the second none.

    File names carry a patient id (``p<NN>_s<N>.png``, four slices per patient).
    """
    for index, folder in enumerate(folders):
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = blob_slice(size, seed=10_000 * index + i, blobs=index == 0)
            image.save(target / f"p{index}{i // 4:02d}_s{i % 4}.png")
    return root
