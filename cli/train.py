"""``covidscan train`` and ``covidscan evaluate``: the original recipe on your own slices,
and reports (JSON + self-contained HTML) whose numbers come from scikit-learn.

TensorFlow, scikit-learn and matplotlib are imported inside the commands only.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

import click

from cli.models import registry_context


class _Recipe:
    """An option's default as the training recipe writes it (``models.train_config``), read
    when needed; ``--help`` shows it where the recipe is installed (not in the API image)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> Any:
        from models.train_config import TrainConfig

        return getattr(TrainConfig, self.name)

    def __str__(self) -> str:
        try:
            return str(self())
        except ImportError:
            return "the recipe's"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _identity(info) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "sha256": info.sha256,
        "classes": list(info.classes),
        "positive_class": info.positive_class,
        "preprocessing": info.preprocessing,
        "trained": info.trained,
        "format": info.format,
    }


def was_scored(score: float) -> bool:
    """Slices that could not be read are scored NaN and left out of the predictions."""
    return not math.isnan(score)


def evaluate_engine(
    engine, data, extra: Optional[dict[str, Any]] = None, batch_size: int = 32
) -> tuple[dict[str, Any], list[tuple[str, str, float]]]:
    """Score ``data`` with ``engine``; the report and the per-slice predictions."""
    from models.evaluate import evaluation_report, score_slices

    scored = score_slices(engine, data, batch_size)
    report = evaluation_report(data, scored, _identity(engine.info), extra)
    predictions = [
        (str(path), data.classes[int(label)], float(score))
        for path, label, score in zip(data.paths, data.labels, scored.scores)
        if was_scored(score)
    ]
    return report, predictions


def _folder_map(raw: Optional[str]):
    from models.dataset import parse_folder_map

    return None if raw is None else parse_folder_map(raw)


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Registry name (default: resnet50-<data folder name>).")
@click.option("--version", help="Default: the first 12 hex digits of the model's SHA-256.")
@click.option("--epochs", type=click.IntRange(1), default=_Recipe("epochs"), show_default=True)
@click.option(
    "--image-size",
    type=click.IntRange(32),
    default=_Recipe("image_size"),
    show_default=True,
    help="Square input size the model is trained at.",
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=_Recipe("batch_size"), show_default=True
)
@click.option(
    "--fine-tune-from",
    metavar="LAYER",
    help="Unfreeze the ResNet50 base from this layer (name or index) on.",
)
@click.option(
    "--imagenet-weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A local ResNet50 'notop' weights file; without one the base is random.",
)
@click.option(
    "--group-regex",
    help="Regex on the slice's path whose first group names the "
    "patient: all of a patient's slices land on one side.",
)
@click.option("--val-split", type=float, default=_Recipe("val_split"), show_default=True)
@click.option("--seed", type=int, default=_Recipe("seed"), show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(1),
    default=_Recipe("patience"),
    show_default=True,
    help="Epochs without a better validation loss before stopping.",
)
@click.option(
    "--classes",
    help="FOLDER=CLASS,... in output order (default: folder names, the positive class first).",
)
@click.option("--positive", help="The positive class (default: the one named like COVID).")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the model, checkpoint and reports go (default "
    "COVIDSCAN_VAR_DIR/training/NAME-TIME).",
)
@click.option("--default", "make_default", is_flag=True, help="Make it the default model.")
def train(
    data_dir: Path,
    name: Optional[str],
    version: Optional[str],
    epochs: int,
    image_size: int,
    batch_size: int,
    fine_tune_from: Optional[str],
    imagenet_weights: Optional[Path],
    group_regex: Optional[str],
    val_split: float,
    seed: int,
    patience: int,
    classes: Optional[str],
    positive: Optional[str],
    output: Optional[Path],
    make_default: bool,
) -> None:
    """Train the original ResNet50 classifier on DATA_DIR (one sub-folder per class),
    evaluate it on the held-out split and register it with its report and model card."""
    from db.model_store import check_part
    from models.dataset import DatasetError, discover, split
    from models.train_config import TrainConfig
    from worker.registration import Registration

    name = name or "resnet50-" + re.sub(r"[^A-Za-z0-9._-]+", "-", data_dir.resolve().name)
    try:
        check_part("model name", name)
        data = discover(data_dir, _folder_map(classes), positive)
        parts = split(data, val_split, seed, group_regex)
    except (ValueError, DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    config = TrainConfig(
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        val_split=val_split,
        seed=seed,
        fine_tune_from=fine_tune_from,
        imagenet_weights=imagenet_weights,
        group_regex=group_regex,
        patience=patience,
    )
    with registry_context() as (settings, session_factory, store):
        out_dir = output or settings.var_dir / "training" / f"{name}-{_stamp()}"
        click.echo(
            f"{len(data.paths)} slices in {data.counts()}; classes "
            f"{list(data.classes)}, positive {data.classes[data.positive_index]}"
        )
        click.echo(
            f"split: {len(parts.train)} training, {len(parts.validation)} validation"
            f"{f' ({parts.groups} groups)' if parts.grouped else ''}; output in {out_dir}"
        )
        _train_and_register(
            data,
            parts,
            config,
            out_dir,
            session_factory,
            store,
            Registration(
                path=out_dir / "model.h5", name=name, version=version, make_default=make_default
            ),
        )


def _train_and_register(data, parts, config, out_dir: Path, session_factory, store, wanted) -> None:
    from models.card import model_card
    from models.loader import load_model_file
    from models.report_html import write_report
    from models.selection import reference_engine
    from models.train import TrainingError
    from models.train import train as fit
    from worker.registration import register_model

    try:
        result = fit(data, parts, config, out_dir)
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from None
    if result.interrupted:
        click.echo("interrupted: keeping the best epoch so far", err=True)
    loaded = load_model_file(
        result.model_path, wanted.name, wanted.version, data.classes, data.positive_index
    )
    engine = reference_engine(loaded, config.batch_size)
    training = {
        "history": result.history,
        "epochs_run": len(result.history.get("loss", [])),
        "best_epoch": result.best_epoch,
        "interrupted": result.interrupted,
        "base_weights": result.base_weights,
        "trainable": result.trainable_from,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "val_split": config.val_split,
        "group_regex": config.group_regex,
        "recipe": "original (see README)",
    }
    validation = data.subset(parts.validation)
    report, predictions = evaluate_engine(
        engine, validation, {"kind": "training", "training": training}
    )
    report["model_card"] = model_card(
        loaded.info.name, loaded.info.version, data, parts, training, report["metrics"]
    )
    (out_dir / "model_card.md").write_text(report["model_card"]["markdown"])
    files = write_report(
        report, out_dir, f"Training report: {loaded.info.name}:{loaded.info.version}", predictions
    )
    model = register_model(
        session_factory,
        store,
        replace(
            wanted,
            path=result.model_path,
            version=loaded.info.version,
            classes=data.classes,
            positive=data.classes[data.positive_index],
            source=f"covidscan train {data.root.resolve()}",
            report=report,
        ),
    )
    metrics = report["metrics"]
    click.echo(
        f"validation: accuracy {metrics['accuracy']:.4f}, sensitivity "
        f"{metrics['sensitivity']:.4f}, specificity {metrics['specificity']:.4f}"
    )
    click.echo(f"report: {files['html']}")
    click.echo(
        f"registered {model.ref} (sha256 {model.sha256})"
        f"{' as the default' if model.is_default else ''}"
    )


@click.command()
@click.argument("model_ref", metavar="MODEL")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--classes",
    help="FOLDER=CLASS,... mapping the data's folders onto the model's "
    "classes (default: by name, or COVID-like vs the other).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the reports go (default COVIDSCAN_VAR_DIR/reports/NAME-VERSION-TIME).",
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=_Recipe("batch_size"), show_default=True
)
@click.option("--attach", is_flag=True, help="Store the report with the registered model.")
def evaluate(
    model_ref: str,
    data_dir: Path,
    classes: Optional[str],
    output: Optional[Path],
    batch_size: int,
    attach: bool,
) -> None:
    """Evaluate MODEL (a registered NAME[:VERSION], or a model file) on DATA_DIR."""
    from db.registry import get_model
    from models.dataset import DatasetError, discover, folder_map_for_model
    from models.loader import ModelLoadError, load_model_file
    from models.report_html import write_report
    from models.selection import reference_engine
    from worker.registration import load_registered

    with registry_context() as (settings, session_factory, store):
        try:
            if Path(model_ref).exists():
                loaded = load_model_file(Path(model_ref))
            else:
                with session_factory() as session:
                    loaded = load_registered(get_model(session, model_ref), store)
            info = loaded.info
            mapping = _folder_map(classes) or folder_map_for_model(
                data_dir, info.classes, info.positive_class
            )
            unknown = sorted(set(mapping.values()) - set(info.classes))
            if unknown:
                raise DatasetError(f"classes {unknown} are not the model's {list(info.classes)}")
            data = discover(data_dir, mapping, info.positive_class)
            engine = reference_engine(loaded, batch_size)
            report, predictions = evaluate_engine(engine, data, {"kind": "evaluation"}, batch_size)
        except (ModelLoadError, DatasetError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        out_dir = output or settings.var_dir / "reports" / f"{info.name}-{info.version}-{_stamp()}"
        files = write_report(
            report, out_dir, f"Evaluation: {info.name}:{info.version} on {data_dir}", predictions
        )
        if attach:
            with session_factory.begin() as session:
                get_model(session, f"{info.name}:{info.version}").report = report
    metrics = report["metrics"]
    click.echo(" ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in metrics.items()))
    click.echo(f"report: {files['json']} and {files['html']}")
