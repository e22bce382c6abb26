"""``covidscan models``: register model files, list them, pick the default, remove them.

These commands talk to the database and the model store directly (DATABASE_URL,
MODEL_STORE_DIR, and the bucket when BLOB_STORE is set), not to the API; TensorFlow is imported
only by ``models add``. Every change is written to the audit log under the operating-system
user's name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import click


@contextmanager
def registry_context() -> Iterator[tuple]:
    """Settings, a session factory and the model store; registry errors become CLI errors."""
    from covidscan.settings import ConfigError, load_settings
    from db import migrate
    from db.model_store import open_model_store
    from db.registry import RegistryError
    from db.session import make_engine, make_session_factory

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield (
            settings,
            make_session_factory(engine),
            open_model_store(settings.model_store_dir, settings.blob_store),
        )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()


@click.group()
def models() -> None:
    """The model registry: which models workers can serve, and the default."""


@models.command("add")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Registry name (letters, digits, . _ -).")
@click.option("--version", help="Default: the first 12 hex digits of the file's SHA-256.")
@click.option(
    "--classes",
    default="COVID,NonCOVID",
    show_default=True,
    help="Class names in output order, separated by commas.",
)
@click.option(
    "--positive",
    help="The class whose probability is reported "
    "(default: the one named like COVID, not non-COVID).",
)
@click.option("--preprocessing", default="seed-v1", show_default=True)
@click.option("--default", "make_default", is_flag=True, help="Make it the default model.")
@click.option(
    "--dicom-window",
    metavar="W,L",
    help="Window (width,level in Hounsfield units) DICOM slices are seen through "
    "before the preprocessing; default the lung window 1500,-600.",
)
@click.option(
    "--trust-code",
    is_flag=True,
    help="Load it even though its layers or ops run code (Lambda layers, custom "
    "objects, TensorFlow ops off the allowlist). Only for files from an "
    "author you trust; recorded in the registry.",
)
def add(
    file: Path,
    name: str,
    version: Optional[str],
    classes: str,
    positive: Optional[str],
    preprocessing: str,
    make_default: bool,
    dicom_window: Optional[str],
    trust_code: bool,
) -> None:
    """Validate a .h5, .keras or SavedModel directory and register a copy of it."""
    from models.dicom import parse_window

    try:
        window = parse_window(dicom_window) if dicom_window else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dicom-window") from None
    from cli.keys import cli_actor
    from db.audit import record
    from models.classes import parse_class_list
    from models.loader import ModelLoadError
    from worker.registration import Registration, register_model

    with registry_context() as (_settings, session_factory, store):
        try:
            model = register_model(
                session_factory,
                store,
                Registration(
                    path=file,
                    name=name,
                    version=version,
                    classes=parse_class_list(classes),
                    positive=positive,
                    preprocessing=preprocessing,
                    make_default=make_default,
                    trust_code=trust_code,
                    dicom_window=window,
                ),
            )
        except (ModelLoadError, ValueError, FileExistsError) as exc:
            raise click.ClickException(str(exc)) from None
        with session_factory.begin() as session:
            record(
                session,
                "model.add",
                key_id=None,
                owner=cli_actor(),
                detail={
                    "model": model.ref,
                    "sha256": model.sha256,
                    "default": model.is_default,
                    "trusted_code": model.trusted_code,
                },
            )
    default = " as the default" if model.is_default else ""
    trusted = ", its code trusted (--trust-code)" if model.trusted_code else ""
    click.echo(f"registered {model.ref} (sha256 {model.sha256}){default}{trusted}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def list_(as_json: bool) -> None:
    """Registered models; * marks the default."""
    from db.registry import describe, list_models

    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory() as session,
    ):
        rows = [describe(m) for m in list_models(session)]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    if not rows:
        click.echo("no registered models: workers serve the untrained resnet50-untrained")
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        trained = ("" if row["trained"] else "  UNTRAINED") + (
            "  TRUSTED-CODE" if row["trusted_code"] else ""
        )
        click.echo(
            f"{mark} {row['name']}:{row['version']}  {row['format']}  "
            f"{row['input_size'][0]}x{row['input_size'][1]}  "
            f"{','.join(row['classes'])} (positive {row['positive_class']})  "
            f"sha256 {row['sha256'][:12]}{trained}"
        )


@models.command("set-default")
@click.argument("ref")
def set_default_(ref: str) -> None:
    """Make NAME[:VERSION] the model new jobs use when they name none."""
    from cli.keys import cli_actor
    from db.audit import record
    from db.registry import get_model, set_default

    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory.begin() as session,
    ):
        model = get_model(session, ref)
        set_default(session, model)
        record(
            session,
            "model.set_default",
            key_id=None,
            owner=cli_actor(),
            detail={"model": model.ref},
        )
        click.echo(f"{model.ref} is the default model")


@models.command("remove")
@click.argument("ref")
def remove(ref: str) -> None:
    """Unregister NAME:VERSION and delete its stored file (refused while jobs use it)."""
    from cli.keys import cli_actor
    from db.audit import record
    from db.registry import get_model, parse_ref, remove_model

    with registry_context() as (_settings, session_factory, store):
        if parse_ref(ref)[1] is None:
            raise click.ClickException(f"name the version to remove: {ref}:VERSION")
        with session_factory.begin() as session:
            model = get_model(session, ref)
            stored = model.stored_path
            remove_model(session, model)
            record(
                session,
                "model.remove",
                key_id=None,
                owner=cli_actor(),
                detail={"model": model.ref, "sha256": model.sha256},
            )
        store.delete(stored)
    click.echo(f"removed {ref}")


@models.command("calibrate")
@click.argument("ref")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
def calibrate(ref: str, data_dir: Path, batch_size: int) -> None:
    """Store DATA_DIR's slices as the calibration set of NAME[:VERSION] for int8.

    Quantizes on them, runs the accuracy gate (no label flips, max |ΔP| ≤ 0.02 on the
    calibration and held-out slices) and, when DATA_DIR has one sub-folder per class, checks
    that int8's ROC AUC is within 0.005 of fp32's; the result goes into the model's report.
    Workers load the set the next time they load the model.
    """
    from db.registry import get_model
    from models import calibration as sets
    from models.dataset import IMAGE_SUFFIXES, DatasetError, discover, folder_map_for_model
    from models.loader import ModelLoadError
    from models.quantization import calibrate as run_calibration
    from worker.registration import load_registered

    with registry_context() as (settings, session_factory, store):
        with session_factory() as session:
            model = get_model(session, ref)
        try:
            loaded = load_registered(model, store)
            try:
                labelled = discover(
                    data_dir,
                    folder_map_for_model(data_dir, loaded.info.classes, loaded.info.positive_class),
                    loaded.info.positive_class,
                )
                paths = list(labelled.paths)
            except DatasetError:  # not one folder per class: unlabelled slices
                labelled = None
                paths = sorted(
                    p
                    for p in data_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            found, gate = run_calibration(
                loaded,
                paths,
                f"{data_dir.resolve()}",
                settings.engine_cache_dir,
                batch_size,
                labelled,
            )
        except (ModelLoadError, sets.CalibrationError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        sets.save(found, store.path(model.stored_path).parent / sets.CALIBRATION_FILE)
        store.put_beside(model.stored_path, sets.CALIBRATION_FILE)
        with session_factory.begin() as session:
            row = get_model(session, model.ref)
            row.report = {**(row.report or {}), "int8_gate": gate.as_dict()}
    click.echo(
        f"calibration set of {model.ref}: {len(found.calibration)} slices, "
        f"{len(found.held_out)} held out, from {data_dir}"
    )
    click.echo(f"int8 gate {'passed' if gate.passed else 'FAILED'}: {gate.describe()}")
    if not gate.passed:
        raise SystemExit(1)
