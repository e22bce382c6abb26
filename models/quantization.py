"""``covidscan models calibrate``: a model's calibration set, checked before it is stored.

The slices become the set int8 quantization calibrates on (three in four) and the held-out
part its accuracy gate also checks (one in four). With labelled slices (one sub-folder
per class), the int8 engine's ROC AUC must also stay within AUC_LIMIT of fp32's; that
verdict is stored with the set, so every worker's gate applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from models.calibration import CalibrationSet, from_images
from models.dataset import LabelledSlices
from models.loader import LoadedModel
from models.parity import GateReport, ReferenceScores, check_gate

AUC_LIMIT = 0.005


def auc_check(
    reference_scores: np.ndarray, candidate_scores: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """ROC AUC of both engines on the same labelled slices, and whether they are close."""
    from sklearn.metrics import roc_auc_score

    keep = np.isfinite(reference_scores) & np.isfinite(candidate_scores)
    fp32 = float(roc_auc_score(labels[keep], reference_scores[keep]))
    candidate = float(roc_auc_score(labels[keep], candidate_scores[keep]))
    return {
        "fp32": round(fp32, 6),
        "candidate": round(candidate, 6),
        "limit": AUC_LIMIT,
        "slices": int(keep.sum()),
        "passed": abs(fp32 - candidate) <= AUC_LIMIT,
    }


def calibrate(
    model: LoadedModel,
    paths: Sequence[Path],
    source: str,
    cache_dir: Path,
    batch_size: int = 32,
    labelled: Optional[LabelledSlices] = None,
) -> tuple[CalibrationSet, GateReport]:
    """Build the set from ``paths``, quantize on it and run the int8 gate (and, with
    ``labelled``, the ROC AUC check). Returns the set (carrying the AUC verdict) and the gate.

    Raises:
        models.calibration.CalibrationError: too few readable slices.
    """
    from models.evaluate import score_slices
    from models.openvino_engine import OpenVINOEngine
    from models.selection import reference_engine

    calibration = from_images(paths, model.info.input_size, source)
    reference = reference_engine(model, batch_size)
    int8 = OpenVINOEngine(model, "int8", batch_size, cache_dir, calibration=calibration)
    auc = None
    if labelled is not None and len(set(labelled.binary_labels())) == 2:
        labels = labelled.binary_labels()
        auc = {
            "int8": auc_check(
                score_slices(reference, labelled, batch_size).scores,
                score_slices(int8, labelled, batch_size).scores,
                labels,
            )
        }
        calibration = replace(calibration, auc=auc)
    gate = check_gate(ReferenceScores(reference, calibration), int8, (auc or {}).get("int8"))
    return calibration, gate
