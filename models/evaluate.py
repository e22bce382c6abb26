"""Score labelled slices with a model and compute the evaluation report.

Metrics come from scikit-learn, computed on P(positive) for every slice: ROC AUC and
the Brier score from the scores themselves, the rest at the serving threshold 0.5
(the label a result gets). "Sensitivity" is the recall of the positive class,
"specificity" the recall of the other(s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from models.dataset import LabelledSlices

THRESHOLD = 0.5
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Scored:
    """P(positive) per slice (NaN where the slice could not be read) and why it failed."""

    scores: np.ndarray
    failures: dict[int, str]


def score_slices(engine, data: LabelledSlices, batch_size: int = 32) -> Scored:
    """Run every slice through ``engine`` (seed-v1 preprocessing), a batch at a time."""
    from models.preprocess import ImageDecodeError, load_seed_v1

    scores = np.full(len(data.paths), np.nan)
    failures: dict[int, str] = {}
    size = engine.info.input_size
    for start in range(0, len(data.paths), batch_size):
        batch, where = [], []
        for index in range(start, min(start + batch_size, len(data.paths))):
            try:
                batch.append(load_seed_v1(data.paths[index].read_bytes(), size))
                where.append(index)
            except (ImageDecodeError, OSError) as exc:
                failures[index] = str(exc)
        if batch:
            scores[where] = engine.predict(np.stack(batch))
    return Scored(scores, failures)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def binary_metrics(
    y_true: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision, F1, ROC AUC, Brier score, confusion
    matrix, ROC and reliability curves for 0/1 labels and P(positive) scores."""
    from sklearn.metrics import (
        accuracy_score,
        brier_score_loss,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
        roc_curve,
    )

    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    y_pred = (scores >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    (tp, fn), (fp, tn) = confusion_matrix(y_true, y_pred, labels=[1, 0]).tolist()
    metrics = {
        "accuracy": accuracy_score(y_true, y_pred),
        "sensitivity": recall_score(y_true, y_pred, pos_label=1, zero_division=0),
        "specificity": recall_score(y_true, y_pred, pos_label=0, zero_division=0),
        "precision": precision_score(y_true, y_pred, pos_label=1, zero_division=0),
        "f1": f1_score(y_true, y_pred, pos_label=1, zero_division=0),
        "roc_auc": roc_auc_score(y_true, scores) if both else None,
        "brier_score": brier_score_loss(y_true, scores, pos_label=1),
    }
    mean_predicted, fraction_positive, counts = _reliability(y_true, scores)
    report: dict[str, Any] = {
        "threshold": threshold,
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
        "metrics": {k: None if v is None else round(float(v), 6) for k, v in metrics.items()},
        "confusion_matrix": {
            "rows": "true positive, true negative",
            "columns": "predicted positive, predicted negative",
            "matrix": [[tp, fn], [fp, tn]],
        },
        "calibration": {
            "bins": CALIBRATION_BINS,
            "mean_predicted": _rounded(mean_predicted),
            "fraction_positive": _rounded(fraction_positive),
            "counts": counts,
        },
    }
    if both:
        fpr, tpr, _ = roc_curve(y_true, scores, pos_label=1)
        report["roc_curve"] = {"fpr": _rounded(fpr), "tpr": _rounded(tpr)}
    else:
        report["note"] = "only one class is present: ROC AUC is undefined"
    return report


def _reliability(y_true: np.ndarray, scores: np.ndarray) -> tuple[list, list, list[int]]:
    """The reliability curve on uniform bins (scikit-learn's), with the count in each bin."""
    from sklearn.calibration import calibration_curve

    fraction_positive, mean_predicted = calibration_curve(
        y_true, scores, n_bins=CALIBRATION_BINS, strategy="uniform"
    )
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)  # the bins calibration_curve uses
    bins = np.searchsorted(edges[1:-1], scores)
    counts = [int(c) for c in np.bincount(bins, minlength=CALIBRATION_BINS) if c > 0]
    return list(mean_predicted), list(fraction_positive), counts


def evaluation_report(
    data: LabelledSlices,
    scored: Scored,
    model: dict[str, Any],
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The JSON report: the model, the data (folders and counts), the metrics, the failures."""
    ok = ~np.isnan(scored.scores)
    if not ok.any():
        raise ValueError(
            "no slice could be scored: " + "; ".join(list(scored.failures.values())[:3])
        )
    report = {
        "model": model,
        "data": {
            "root": str(data.root),
            "folders": data.counts(),
            "class_of_folder": data.folders,
            "positive_class": data.classes[data.positive_index],
        },
        **binary_metrics(data.binary_labels()[ok], scored.scores[ok]),
        "failed": [
            {"path": str(data.paths[i]), "error": e} for i, e in sorted(scored.failures.items())
        ],
    }
    if extra:
        report.update(extra)
    return report
