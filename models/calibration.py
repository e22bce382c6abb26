"""Calibration sets: the preprocessed slices an int8 engine is quantized on and gated with.

A model's calibration set is stored beside it in the model store
(``covidscan models calibrate NAME DIR``); a model without one gets the default, a fixed
set of CT-like slices the project generates (:func:`models.synthetic.ct_slice_array`),
reported as such. Every set has two parts: ``calibration`` (what quantization sees) and
``held_out`` (what only the accuracy gate sees).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np

from models.preprocess import ImageDecodeError, load_seed_v1, preprocess_seed_v1
from models.synthetic import ct_slice_array

CALIBRATION_FILE = "calibration.npz"
DEFAULT_CALIBRATION = 64
DEFAULT_HELD_OUT = 32
GENERATED_SOURCE = "generated CT-like slices (no real data: run `covidscan models calibrate`)"
MIN_SLICES = 8


class CalibrationError(ValueError):
    """A calibration set cannot be made or read; the message says why."""


@dataclass(frozen=True)
class CalibrationSet:
    calibration: np.ndarray  # (N, H, W, 3) float32, seed-v1
    held_out: np.ndarray  # (M, H, W, 3) float32, seed-v1
    source: str
    # By precision: the ROC AUC check on labelled slices (``covidscan models calibrate`` on
    # class folders), {"fp32": …, "candidate": …, "limit": 0.005, "passed": …}.
    auc: Optional[dict[str, dict[str, Any]]] = None

    @cached_property
    def sha256(self) -> str:
        """Of the arrays, once: the worker's heartbeat describes its engines every few
        seconds, and hashing tens of MB each time took CPU from inference."""
        digest = hashlib.sha256()
        for part in (self.calibration, self.held_out):
            digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
        return digest.hexdigest()

    @property
    def generated(self) -> bool:
        return self.source == GENERATED_SOURCE

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "generated": self.generated,
            "calibration": len(self.calibration),
            "held_out": len(self.held_out),
            "sha256": self.sha256,
        }


def synthetic_slices(input_size: tuple[int, int], count: int, first_seed: int) -> np.ndarray:
    """Generated CT-like slices (grayscale and tinted, several sizes), preprocessed with seed-v1."""
    images = []
    for i in range(count):
        rgb = ct_slice_array(size=96 + 32 * (i % 6), seed=first_seed + i, rgb=bool(i % 2))
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        images.append(preprocess_seed_v1(rgb, input_size))
    return np.stack(images)


def default_calibration(input_size: tuple[int, int]) -> CalibrationSet:
    """The generated set: 64 slices to calibrate on, 32 others held out."""
    return CalibrationSet(
        synthetic_slices(input_size, DEFAULT_CALIBRATION, 20_000),
        synthetic_slices(input_size, DEFAULT_HELD_OUT, 30_000),
        GENERATED_SOURCE,
    )


def from_images(paths: Sequence[Path], input_size: tuple[int, int], source: str) -> CalibrationSet:
    """Preprocess image files; every fourth one (in name order) is held out.

    Raises:
        CalibrationError: fewer than MIN_SLICES readable images.
    """
    tensors = []
    for path in sorted(paths):
        try:
            tensors.append(load_seed_v1(Path(path).read_bytes(), input_size))
        except (ImageDecodeError, OSError):
            continue
    if len(tensors) < MIN_SLICES:
        raise CalibrationError(
            f"{source}: {len(tensors)} readable PNG/JPEG slices; "
            f"a calibration set needs at least {MIN_SLICES}"
        )
    held = [t for i, t in enumerate(tensors) if i % 4 == 3]
    kept = [t for i, t in enumerate(tensors) if i % 4 != 3]
    return CalibrationSet(np.stack(kept), np.stack(held), source)


def save(calibration: CalibrationSet, path: Path) -> None:
    """Write atomically: a reader never sees half a set."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        calibration=calibration.calibration,
        held_out=calibration.held_out,
        source=np.array(calibration.source),
        auc=np.array(json.dumps(calibration.auc)),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def load(path: Path, input_size: tuple[int, int]) -> CalibrationSet:
    """Read a stored set and check that it fits the model's input size."""
    try:
        with np.load(path, allow_pickle=False) as data:
            found = CalibrationSet(
                data["calibration"].astype(np.float32),
                data["held_out"].astype(np.float32),
                str(data["source"]),
                json.loads(str(data["auc"])) if "auc" in data else None,
            )
    except (OSError, KeyError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a calibration set: {exc}") from None
    expected = (*input_size, 3)
    if found.calibration.shape[1:] != expected or found.held_out.shape[1:] != expected:
        raise CalibrationError(
            f"{path}: slices of shape {found.calibration.shape[1:]}, the model takes {expected}"
        )
    return found


def for_model(model_file: Path, input_size: tuple[int, int]) -> CalibrationSet:
    """The set stored beside a model file in the store, else the generated default."""
    stored = Path(model_file).parent / CALIBRATION_FILE
    return load(stored, input_size) if stored.exists() else default_calibration(input_size)
