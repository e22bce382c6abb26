"""Register model files: validate that they load and predict, copy them into the store,
record them in SQL. Shared by ``covidscan models add``, ``covidscan train`` and the
worker's ``MODEL_PATH`` start-up step. TensorFlow is imported only when a file is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from covidscan.settings import Settings
from db.model_store import ModelStore, check_part, open_model_store
from db.models import Model
from db.registry import (
    ModelExists,
    add_model,
    default_model,
    find_model,
    models_with_sha256,
    set_default,
)

if TYPE_CHECKING:
    from models.loader import LoadedModel

log = logging.getLogger(__name__)

KNOWN_PREPROCESSING = ("seed-v1",)


@dataclass(frozen=True)
class Registration:
    """What to register: a file and what it is."""

    path: Path
    name: Optional[str] = None
    version: Optional[str] = None
    classes: tuple[str, ...] = ("COVID", "NonCOVID")
    positive: Optional[str] = None
    preprocessing: str = "seed-v1"
    make_default: bool = False
    source: Optional[str] = None
    report: Optional[dict[str, Any]] = None
    trained: bool = True
    trust_code: bool = False
    dicom_window: Optional[tuple[float, float]] = None  # (width, level); None: the lung window


def validate_model_file(request: Registration):
    """Load the file, check its output width against the classes, run a warm-up prediction.

    Returns:
        The :class:`models.loader.LoadedModel`.
    Raises:
        models.loader.ModelLoadError: it does not load, has the wrong shape or predicts
            non-finite values.
        ValueError: unknown preprocessing or positive class.
    """
    from models.classes import positive_index
    from models.loader import load_model_file
    from models.validation import check_warm_up

    if request.preprocessing not in KNOWN_PREPROCESSING:
        raise ValueError(
            f"unknown preprocessing {request.preprocessing!r}; known: "
            + ", ".join(KNOWN_PREPROCESSING)
        )
    index = positive_index(request.classes, request.positive)
    loaded = load_model_file(
        request.path,
        request.name,
        request.version,
        request.classes,
        index,
        trust_code=request.trust_code,
    )
    check_warm_up(loaded, str(request.path))
    return loaded


def _window_columns(window: Optional[tuple[float, float]]) -> dict[str, Optional[float]]:
    width, level = window if window is not None else (None, None)
    return {"dicom_window_width": width, "dicom_window_level": level}


def register_model(
    session_factory: sessionmaker[Session], store: ModelStore, request: Registration
) -> Model:
    """Validate, copy into the store and record a model file.

    Raises:
        ModelExists: ``name:version`` is already registered.
        models.loader.ModelLoadError, ValueError: see :func:`validate_model_file`.
    """
    for what, value in (("model name", request.name), ("version", request.version)):
        if value is not None:
            check_part(what, value)
    info = validate_model_file(request).info
    ref = f"{info.name}:{info.version}"
    with session_factory() as session:
        if find_model(session, ref) is not None:
            raise ModelExists(f"model {ref} is already registered")
    relative, created = _copy_in(store, request.path, info)
    try:
        with session_factory.begin() as session:
            model = add_model(
                session,
                Model(
                    name=info.name,
                    version=info.version,
                    sha256=info.sha256,
                    format=info.format,
                    input_height=info.input_size[0],
                    input_width=info.input_size[1],
                    classes=list(info.classes),
                    positive_class=info.positive_class,
                    preprocessing=request.preprocessing,
                    trained=request.trained,
                    source=request.source or f"file {Path(request.path).resolve()}",
                    report=request.report,
                    stored_path=relative,
                    trusted_code=request.trust_code,
                    **_window_columns(request.dicom_window),
                ),
                make_default=request.make_default,
            )
    except (IntegrityError, ModelExists):  # registered by another process since the check
        # That process may have found this copy in place and recorded it: it stays.
        _forget_copy(session_factory, store, relative, created)
        raise ModelExists(f"model {ref} is already registered") from None
    except BaseException:
        _forget_copy(session_factory, store, relative, created)
        raise
    log.info(
        "registered model %s (sha256 %s)%s",
        model.ref,
        model.sha256[:12],
        ", the default" if model.is_default else "",
    )
    return model


def _forget_copy(
    session_factory: sessionmaker[Session], store: ModelStore, relative: str, created: bool
) -> None:
    """Delete the copy this registration made, unless a registered model names it: another
    worker registering the same file at the same moment reuses a copy in place (see
    :func:`_copy_in`) and may have recorded it first. When that cannot be checked, the
    copy is kept: a stray folder costs disk, a deleted one breaks a registered model."""
    if not created:
        return
    try:
        with session_factory() as session:
            if session.scalar(select(Model.id).where(Model.stored_path == relative)) is not None:
                log.info("stored copy %s is registered by another process; kept", relative)
                return
    except Exception:
        log.warning("could not check whether stored copy %s is registered; kept", relative)
        return
    store.delete(relative)


def _copy_in(store: ModelStore, path: Path, info) -> tuple[str, bool]:
    """Copy the file into the store; returns its stored path and whether this call copied it.

    An identical copy already in place (another worker registering the same file at the
    same moment, or a registration whose database row was lost) is reused.
    """
    from models.loader import ModelLoadError, file_sha256

    try:
        relative, created = store.put(path, info.name, info.version), True
    except FileExistsError:
        relative, created = store.relative_path(path, info.name, info.version), False
        store.resolve(relative)  # stored from another host: fetch it to compare
        if not store.path(relative).exists() or file_sha256(store.path(relative)) != info.sha256:
            raise
    if created and file_sha256(store.path(relative)) != info.sha256:
        store.delete(relative)
        raise ModelLoadError(f"{path} changed while it was being copied")
    return relative, created


def register_or_select(
    session_factory: sessionmaker[Session], store: ModelStore, path: Path, trust_code: bool = False
) -> Model:
    """``MODEL_PATH``: the registered model with this file's SHA-256, else register it.

    Either way it becomes the default only when no default exists, so a default chosen
    with ``covidscan models set-default`` survives restarts. ``trust_code``
    (``MODEL_TRUST_CODE``) lets a file whose layers run code be registered.
    """
    from models.loader import file_sha256

    sha256 = file_sha256(path)
    with session_factory.begin() as session:
        existing = models_with_sha256(session, sha256)
        if existing:
            model = existing[0]
            if default_model(session) is None:
                set_default(session, model)
            log.info("MODEL_PATH %s is registered as %s", path, model.ref)
            return model
        no_default = default_model(session) is None
    try:
        return register_model(
            session_factory,
            store,
            Registration(
                path=Path(path),
                make_default=no_default,
                source=f"MODEL_PATH {path}",
                trust_code=trust_code,
            ),
        )
    except ModelExists:
        with session_factory() as session:  # another worker registered it first
            return models_with_sha256(session, sha256)[0]


def register_configured_model(
    settings: Settings, session_factory: Optional[sessionmaker[Session]] = None
) -> Optional[Model]:
    """Register ``MODEL_PATH`` when it is set (idempotent); None when it is not.

    Runs before jobs can be accepted (``covidscan migrate``, ``make run``) and again at
    every worker's start-up, so that the configured model is the registry's default (unless
    another was chosen with ``covidscan models set-default``) before any job is pinned.
    Without ``session_factory`` it opens, and then closes, a connection of its own.

    Raises:
        models.loader.ModelLoadError: the file does not load or predict.
    """
    from db.session import make_engine, make_session_factory

    if settings.model_path is None:
        return None
    if session_factory is not None:
        return register_or_select(
            session_factory,
            open_model_store(settings.model_store_dir, settings.blob_store),
            settings.model_path,
            settings.model_trust_code,
        )
    engine = make_engine(settings.database_url)
    try:
        return register_configured_model(settings, make_session_factory(engine))
    finally:
        engine.dispose()


def load_registered(model: Model, store: ModelStore) -> LoadedModel:
    """Load a registered model's stored file (fetched first from the bucket when the store
    is mirrored and this host lacks it), refusing it when its SHA-256 changed.

    Raises:
        models.loader.ModelLoadError: missing, tampered or unloadable file.
    """
    from dataclasses import replace

    from models.loader import ModelLoadError, file_sha256, load_model_file

    def same_sha256(fetched: Path) -> None:
        if not fetched.exists():
            raise ModelLoadError(
                f"the model store's copy of {model.ref} lacks {fetched.name}; refusing it"
            )
        if file_sha256(fetched) != model.sha256:
            raise ModelLoadError(
                f"the model store's copy of {model.ref} has changed since "
                f"it was registered (its SHA-256 is not {model.sha256}); "
                "refusing it"
            )

    classes = tuple(model.classes)
    loaded = load_model_file(
        store.resolve(model.stored_path, same_sha256),
        name=model.name,
        version=model.version,
        classes=classes,
        positive_index=classes.index(model.positive_class),
        expected_sha256=model.sha256,
        trust_code=model.trusted_code,
    )
    window = loaded.info.dicom_window
    if model.dicom_window_width is not None and model.dicom_window_level is not None:
        window = (model.dicom_window_width, model.dicom_window_level)
    loaded.info = replace(
        loaded.info, trained=model.trained, preprocessing=model.preprocessing, dicom_window=window
    )
    return loaded
