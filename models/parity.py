"""The accuracy gate: a candidate engine against the TensorFlow fp32 reference.

A candidate serves only after it matches the reference on the model's calibration set
(:mod:`models.calibration`), both the part int8 quantization saw and the held-out part:
no label flips, and max |ΔP(positive)| within the precision's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from models.calibration import CalibrationSet, synthetic_slices

CALIBRATION_SIZE = 16
FP32_TOLERANCE = 1e-4
REDUCED_TOLERANCE = 1e-2
INT8_TOLERANCE = 2e-2
TOLERANCES = {
    "fp32": FP32_TOLERANCE,
    "bf16": REDUCED_TOLERANCE,
    "fp16": REDUCED_TOLERANCE,
    "int8": INT8_TOLERANCE,
}


def calibration_batch(input_size: tuple[int, int], count: int = CALIBRATION_SIZE) -> np.ndarray:
    """A fixed batch of generated slices, for checks that need no model's calibration set."""
    return synthetic_slices(input_size, count, 1000)


@dataclass(frozen=True)
class ParityReport:
    """How far a candidate is from the reference on one set of slices."""

    precision: str
    max_abs_diff: float
    label_flips: int
    tolerance: float
    count: int = 0

    @property
    def passed(self) -> bool:
        return (
            bool(np.isfinite(self.max_abs_diff))
            and self.max_abs_diff <= self.tolerance
            and self.label_flips == 0
        )

    def describe(self) -> str:
        return (
            f"max |ΔP| {self.max_abs_diff:.2e} (limit {self.tolerance:.0e}), "
            f"{self.label_flips} label flips"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "slices": self.count,
            "max_abs_diff": self.max_abs_diff,
            "label_flips": self.label_flips,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityReport:
    """Compare two vectors of P(positive) with the precision's tolerance (see TOLERANCES)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"{reference.shape} reference values, {candidate.shape} candidate values")
    diff = np.abs(reference - candidate)
    max_diff = float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")
    flips = int(np.sum((reference >= 0.5) != (candidate >= 0.5)))
    return ParityReport(precision, max_diff, flips, TOLERANCES[precision], len(reference))


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict for one candidate: parity on each part of the calibration set,
    and, when the model's evaluation recorded one, the ROC AUC check."""

    precision: str
    parts: dict[str, ParityReport]
    calibration: dict[str, Any]
    auc: Optional[dict[str, Any]] = None

    @property
    def passed(self) -> bool:
        auc_ok = self.auc is None or bool(self.auc.get("passed"))
        return auc_ok and all(part.passed for part in self.parts.values())

    def describe(self) -> str:
        text = "; ".join(f"{name}: {part.describe()}" for name, part in self.parts.items())
        if self.auc is not None:
            text += (
                f"; ROC AUC {self.auc['candidate']:.4f} vs fp32 {self.auc['fp32']:.4f} "
                f"(limit {self.auc['limit']})"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "passed": self.passed,
            "parts": {name: part.as_dict() for name, part in self.parts.items()},
            "calibration": self.calibration,
            "auc": self.auc,
        }


class ReferenceScores:
    """The reference engine's P(positive) on a calibration set, computed once per model."""

    def __init__(self, reference, calibration: CalibrationSet) -> None:
        self.calibration = calibration
        self.values = {
            "calibration": reference.predict(calibration.calibration),
            "held_out": reference.predict(calibration.held_out),
        }


def check_gate(
    scores: ReferenceScores, candidate, recorded_auc: Optional[dict[str, Any]] = None
) -> GateReport:
    """Run ``candidate`` on both parts of the calibration set and compare with the reference.

    ``recorded_auc`` is the model report's ROC AUC check for this precision, if any
    (``covidscan models calibrate`` with labelled slices writes it).
    """
    sets = {"calibration": scores.calibration.calibration, "held_out": scores.calibration.held_out}
    parts = {
        name: compare(scores.values[name], candidate.predict(batch), candidate.precision)
        for name, batch in sets.items()
    }
    return GateReport(candidate.precision, parts, scores.calibration.describe(), recorded_auc)
