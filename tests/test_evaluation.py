"""Evaluation metrics against a direct computation, and the self-contained HTML report."""

import numpy as np
import pytest

from models.evaluate import binary_metrics
from models.report_html import render


def direct_metrics(y, p):
    """The metrics from their definitions, with NumPy only."""
    pred = p >= 0.5
    tp, fn = np.sum(pred & (y == 1)), np.sum(~pred & (y == 1))
    fp, tn = np.sum(pred & (y == 0)), np.sum(~pred & (y == 0))
    pos, neg = p[y == 1], p[y == 0]
    # ROC AUC = P(score of a positive > score of a negative), ties counting half.
    auc = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (
        len(pos) * len(neg)
    )
    precision = tp / (tp + fp)
    sensitivity = tp / (tp + fn)
    return {
        "accuracy": (tp + tn) / len(y),
        "sensitivity": sensitivity,
        "specificity": tn / (tn + fp),
        "precision": precision,
        "f1": 2 * precision * sensitivity / (precision + sensitivity),
        "roc_auc": auc,
        "brier_score": np.mean((p - y) ** 2),
    }, [[tp, fn], [fp, tn]]


def check_against_direct(report, y, p):
    expected, matrix = direct_metrics(np.asarray(y), np.asarray(p))
    for name, value in expected.items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert report["confusion_matrix"]["matrix"] == matrix


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 300), 0, 1)
    report = binary_metrics(y, p)
    check_against_direct(report, y, p)
    assert report["n"] == 300 and report["n_positive"] == int(y.sum())
    calibration = report["calibration"]
    assert sum(calibration["counts"]) == 300
    first_bin = p < 0.1
    assert calibration["mean_predicted"][0] == pytest.approx(p[first_bin].mean(), abs=1e-6)
    assert calibration["fraction_positive"][0] == pytest.approx(y[first_bin].mean(), abs=1e-6)


def test_auc_comes_from_scores_not_labels():
    y = np.array([1, 1, 0, 0])
    report = binary_metrics(y, np.array([0.9, 0.6, 0.55, 0.1]))  # all above 0.5 but ranked
    assert report["metrics"]["roc_auc"] == 1.0 and report["metrics"]["accuracy"] == 0.75


def test_one_class_only_leaves_auc_undefined():
    report = binary_metrics(np.array([1, 1]), np.array([0.7, 0.2]))
    assert report["metrics"]["roc_auc"] is None and "undefined" in report["note"]


def test_the_html_report_embeds_its_figures_and_needs_no_network():
    y = np.array([1, 0, 1, 0, 1, 0])
    report = binary_metrics(y, np.array([0.8, 0.3, 0.6, 0.55, 0.4, 0.1]))
    report.update(
        model={"name": "m", "version": "1"},
        data={"positive_class": "COVID", "folders": {"COVID": 3, "NonCOVID": 3}},
        training={
            "history": {
                "loss": [0.7, 0.5],
                "val_loss": [0.6, 0.55],
                "accuracy": [0.5, 0.8],
                "val_accuracy": [0.5, 0.7],
            }
        },
    )
    page = render(report, "t")
    assert page.count("data:image/png;base64,") == 5  # ROC, confusion, reliability, 2 curves
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "not for clinical diagnosis" in page
