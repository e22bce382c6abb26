"""Parity of a candidate engine with the TensorFlow fp32 reference on a fixed calibration batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.preprocess import preprocess_seed_v1
from models.synthetic import ct_slice_array

CALIBRATION_SIZE = 16
FP32_TOLERANCE = 1e-4
REDUCED_TOLERANCE = 1e-2


def calibration_batch(input_size: tuple[int, int], count: int = CALIBRATION_SIZE) -> np.ndarray:
    """Fixed synthetic slices (grayscale and tinted, several sizes), preprocessed with seed-v1."""
    images = []
    for i in range(count):
        rgb = ct_slice_array(size=96 + 32 * (i % 5), seed=1000 + i, rgb=bool(i % 2))
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        images.append(preprocess_seed_v1(rgb, input_size))
    return np.stack(images)


@dataclass(frozen=True)
class ParityReport:
    """How far a candidate is from the reference on the calibration batch."""

    precision: str
    max_abs_diff: float
    label_flips: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance \
            and self.label_flips == 0

    def describe(self) -> str:
        return (f"max |ΔP| {self.max_abs_diff:.2e} (limit {self.tolerance:.0e}), "
                f"{self.label_flips} label flips")


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityReport:
    """Compare two vectors of P(positive); fp32 allows 1e-4, bf16/fp16 1e-2 and no flips."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"{reference.shape} reference values, {candidate.shape} candidate values")
    tolerance = FP32_TOLERANCE if precision == "fp32" else REDUCED_TOLERANCE
    diff = np.abs(reference - candidate)
    max_diff = float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")
    flips = int(np.sum((reference >= 0.5) != (candidate >= 0.5)))
    return ParityReport(precision, max_diff, flips, tolerance)


def check_parity(reference, candidate) -> ParityReport:
    """Run both engines on the calibration batch of the reference's model."""
    batch = calibration_batch(reference.info.input_size)
    return compare(reference.predict(batch), candidate.predict(batch), candidate.precision)
