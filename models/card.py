"""The model card registered with a trained model: what it was trained on, how, how well,
and what it is for."""

from __future__ import annotations

from collections import Counter
from typing import Any

from models.dataset import LabelledSlices, Split

INTENDED_USE = (
    "Research on chest-CT slice classification. Not a medical device: not for "
    "clinical diagnosis, triage or any decision about a patient."
)
LIMITATIONS = (
    "Trained and validated on the folders listed here only; performance on other scanners, "
    "hospitals or populations is unknown.",
    "Scores are per slice, not per patient or study.",
    "A slice-level random split lets slices of one patient fall on both sides and inflates "
    "validation scores; use --group-regex to split by patient.",
)


def _per_class(data: LabelledSlices, indices: list[int]) -> dict[str, int]:
    counted = Counter(data.classes[int(data.labels[i])] for i in indices)
    return {name: counted.get(name, 0) for name in data.classes}


def model_card(
    name: str,
    version: str,
    data: LabelledSlices,
    split: Split,
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The card as structured fields plus the same as Markdown (``markdown``)."""
    card = {
        "model": f"{name}:{version}",
        "architecture": "ResNet50 base → Flatten → Dropout(0.5) → Dense(softmax)",
        "classes": list(data.classes),
        "positive_class": data.classes[data.positive_index],
        "data": {"root": str(data.root), "folders": data.counts(), "class_of_folder": data.folders},
        "split": {
            "train": _per_class(data, split.train),
            "validation": _per_class(data, split.validation),
            "by_group": split.grouped,
            "groups": split.groups,
            "seed": training["seed"],
            "validation_fraction": training["val_split"],
        },
        "training": {
            k: training[k]
            for k in (
                "epochs_run",
                "best_epoch",
                "interrupted",
                "base_weights",
                "trainable",
                "image_size",
                "batch_size",
            )
        },
        "validation_metrics": metrics,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
    }
    card["markdown"] = _markdown(card)
    return card


def _markdown(card: dict[str, Any]) -> str:
    split = card["split"]
    lines = [
        f"# Model card: {card['model']}",
        "",
        f"**Intended use:** {card['intended_use']}",
        "",
        f"**Architecture:** {card['architecture']}; classes {', '.join(card['classes'])} "
        f"(positive: {card['positive_class']}); preprocessing seed-v1.",
        "",
        "## Data",
        f"From `{card['data']['root']}`:",
        "",
        *[
            f"- `{folder}` → {card['data']['class_of_folder'][folder]}: {count} slices"
            for folder, count in card["data"]["folders"].items()
        ],
        "",
        "## Split",
        f"{'By group (patient)' if split['by_group'] else 'Stratified by slice'}, "
        f"{split['validation_fraction']:.0%} validation, seed {split['seed']}.",
        "",
        f"- training: {split['train']}",
        f"- validation: {split['validation']}",
        "",
        "## Training",
        *[f"- {key.replace('_', ' ')}: {value}" for key, value in card["training"].items()],
        "",
        "## Validation metrics (threshold 0.5)",
        *[
            f"- {key}: {'undefined' if value is None else f'{value:.4f}'}"
            for key, value in card["validation_metrics"].items()
        ],
        "",
        "## Limitations",
        *[f"- {item}" for item in card["limitations"]],
    ]
    return "\n".join(lines) + "\n"
