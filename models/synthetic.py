"""Synthetic chest-CT-like slices: for parity calibration, tests, the benchmark and the docs.

They look like a slice (dark background, bright body ellipse, darker lungs, noise,
ground-glass-like patches) but carry no diagnosis; they exercise the pipeline only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ct_slice_array(size: int = 128, seed: int = 0, rgb: bool = False) -> np.ndarray:
    """A ``(size, size)`` uint8 grayscale slice, or ``(size, size, 3)`` tinted RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1
    lungs = (((x - 0.33) / 0.12) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1) | (
        ((x - 0.67) / 0.12) ** 2 + ((y - 0.5) / 0.2) ** 2 < 1
    )
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


def corrupt_png(size: int = 128) -> bytes:
    """A PNG signature and header, then a truncated stream: passes sniffing, fails decoding."""
    return png_slice(size, seed=999)[:120]


def blob_slices(
    count: int, size: int = 64, radius: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices where a bright disc, somewhere, makes a slice positive; both classes carry a
    bright bar along the top (a label-like distractor that decides nothing).

    Returns:
        ``(images, labels, centres)``: float32 ``(count, size, size, 3)`` in [0, 1], 1 for
        positive, and each positive's disc centre as (row, column) (-1, -1 for negatives).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.float32)
    labels = np.arange(count) % 2
    centres = np.full((count, 2), -1)
    rows, cols = np.mgrid[:size, :size]
    for i in range(count):
        image = ct_slice_array(size, seed + i).astype(np.float32) / 255.0 * 0.6
        image[1:4, size // 4 : 3 * size // 4] = 1.0
        if labels[i]:
            centre = rng.integers(radius + 8, size - radius - 2, size=2)
            image[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = 1.0
            centres[i] = centre
        images[i] = image[..., None]
    return images, labels, centres


def save_blob_model(
    path: Path, images: np.ndarray, labels: np.ndarray, epochs: int = 8, seed: int = 5
) -> Path:
    """A small CNN with the original head (Flatten, Dropout, Dense softmax), trained on
    :func:`blob_slices` (class 0 = positive, as the original models order them); saved as H5.

    Its Grad-CAM heatmaps land on the discs: the Grad-CAM tests and docs/images/gradcam-example.png
    use it where a trained ResNet50 would be too slow to make.
    """
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    size = images.shape[1]
    layers = tf_keras.layers
    model = tf_keras.Sequential(
        [
            tf_keras.Input((size, size, 3)),
            layers.Conv2D(8, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=tf_keras.optimizers.Adam(3e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    one_hot = np.stack([labels == 1, labels == 0], axis=1).astype(np.float32)
    model.fit(images, one_hot, epochs=epochs, batch_size=32, verbose=0)
    model.save(str(path), save_format="h5")
    return path
