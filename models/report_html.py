"""A self-contained HTML page for an evaluation (or training) report.

Figures are drawn with matplotlib's object API (no pyplot state, no display) and
embedded as base64 PNGs: the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Optional

METRIC_NAMES = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall of positive)",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1",
    "roc_auc": "ROC AUC (from scores)",
    "brier_score": "Brier score",
}


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 4.5, height: float = 4.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def roc_figure(report: dict[str, Any]) -> Optional[str]:
    if "roc_curve" not in report:
        return None
    figure, axes = _figure()
    axes.plot(report["roc_curve"]["fpr"], report["roc_curve"]["tpr"], label="model")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(
        xlabel="1 − specificity",
        ylabel="sensitivity",
        title=f"ROC, AUC = {report['metrics']['roc_auc']:.3f}",
    )
    axes.legend(loc="lower right")
    return _png(figure)


def confusion_figure(report: dict[str, Any], positive: str) -> str:
    matrix = report["confusion_matrix"]["matrix"]
    figure, axes = _figure(4.0, 3.6)
    axes.imshow(matrix, cmap="Blues")
    for row in range(2):
        for column in range(2):
            axes.text(column, row, str(matrix[row][column]), ha="center", va="center", fontsize=14)
    ticks = [positive, f"not {positive}"]
    axes.set_xticks([0, 1], ticks)
    axes.set_yticks([0, 1], ticks)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix at P ≥ 0.5")
    return _png(figure)


def reliability_figure(report: dict[str, Any]) -> str:
    calibration = report["calibration"]
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(
        calibration["mean_predicted"], calibration["fraction_positive"], marker="o", label="model"
    )
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted P(positive)",
        ylabel="fraction positive",
        title=f"Reliability, Brier = {report['metrics']['brier_score']:.3f}",
    )
    axes.legend(loc="upper left")
    return _png(figure)


def training_figures(history: dict[str, list[float]]) -> list[str]:
    figures = []
    for metric in ("loss", "accuracy"):
        if metric not in history:
            continue
        figure, axes = _figure(5.0, 3.6)
        epochs = range(1, len(history[metric]) + 1)
        axes.plot(epochs, history[metric], marker="o", label="training")
        if f"val_{metric}" in history:
            axes.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axes.set(xlabel="epoch", ylabel=metric, title=f"{metric.capitalize()} per epoch")
        axes.legend()
        figures.append(_png(figure))
    return figures


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _fmt(value: Optional[float]) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def render(report: dict[str, Any], title: str) -> str:
    """The whole page as a string."""
    positive = report["data"]["positive_class"]
    model = report["model"]
    images = [roc_figure(report), confusion_figure(report, positive), reliability_figure(report)]
    training = report.get("training")
    if training:
        images += training_figures(training.get("history", {}))
    figures = "".join(
        f'<img alt="figure" src="data:image/png;base64,{png}">' for png in images if png
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<p class=warn>Research use only; not for clinical diagnosis.</p>",
        "<h2>Model</h2>",
        _table(
            [
                (k, model.get(k))
                for k in (
                    "name",
                    "version",
                    "sha256",
                    "classes",
                    "positive_class",
                    "preprocessing",
                    "trained",
                )
            ]
        ),
        "<h2>Metrics</h2>",
        f"<p>{report['n']} slices, {report['n_positive']} {positive}.</p>",
        _table([(label, _fmt(report["metrics"][key])) for key, label in METRIC_NAMES.items()]),
        "<h2>Figures</h2>",
        f"<div class=figs>{figures}</div>",
        "<h2>Data</h2>",
        _table(list(report["data"]["folders"].items())),
    ]
    card = report.get("model_card")
    if card:
        sections += ["<h2>Model card</h2>", f"<pre>{html.escape(card['markdown'])}</pre>"]
    if report.get("failed"):
        sections += [
            "<h2>Slices that could not be read</h2>",
            _table([(f["path"], f["error"]) for f in report["failed"]]),
        ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}.warn{color:#a00;font-weight:bold}.figs img{margin:6px}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}"
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )


def write_report(report: dict[str, Any], out_dir, title: str, predictions=None) -> dict[str, str]:
    """Write ``report.json``, ``report.html`` and, given ``(path, class, score)`` rows,
    ``predictions.csv`` into ``out_dir``; returns the paths written."""
    import csv
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    written["json"].write_text(json.dumps(report, indent=2))
    written["html"].write_text(render(report, title), encoding="utf-8")
    if predictions is not None:
        written["predictions"] = out_dir / "predictions.csv"
        with open(written["predictions"], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "true_class", "probability_positive"])
            writer.writerows(predictions)
    return {key: str(path) for key, path in written.items()}
