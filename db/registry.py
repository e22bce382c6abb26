"""Data functions for the model registry: add, find, list, pick the default, remove.

Every function takes a ``session``; the caller owns the transaction. A reference
is ``name`` or ``name:version``; a bare name means that name's default model if it
is the default, else its newest version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.identity import ModelIdentity
from db.models import Job, Model, Scan, ScanStatus
from db.session import rows_changed


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says why."""


class ModelNotFound(RegistryError):
    pass


class ModelExists(RegistryError):
    pass


class ModelInUse(RegistryError):
    pass


def parse_ref(ref: str) -> tuple[str, Optional[str]]:
    """Split ``name`` or ``name:version``.

    Raises:
        RegistryError: the reference is empty or has an empty part.
    """
    name, _, version = ref.strip().partition(":")
    if not name or (":" in ref and not version):
        raise RegistryError(f"model reference {ref!r} must be NAME or NAME:VERSION")
    return name, version or None


def describe(model: Model) -> dict[str, Any]:
    """A registered model's metadata as plain values (``created_at`` stays a datetime)."""
    return {
        "name": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "format": model.format,
        "input_size": [model.input_height, model.input_width],
        "classes": list(model.classes),
        "positive_class": model.positive_class,
        "preprocessing": model.preprocessing,
        "trained": model.trained,
        "source": model.source,
        "default": model.is_default,
        "created_at": model.created_at,
        "has_report": model.report is not None,
        "trusted_code": model.trusted_code,
        "dicom_window": (
            None
            if model.dicom_window_width is None
            else [model.dicom_window_width, model.dicom_window_level]
        ),
    }


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.name, Model.created_at)))


def default_model(session: Session) -> Optional[Model]:
    return session.scalars(select(Model).where(Model.is_default.is_(True))).first()


def find_model(session: Session, ref: str) -> Optional[Model]:
    """The model a reference names, or None."""
    name, version = parse_ref(ref)
    query = select(Model).where(Model.name == name)
    if version is not None:
        return session.scalars(query.where(Model.version == version)).first()
    return session.scalars(
        query.order_by(Model.is_default.desc(), Model.created_at.desc(), Model.version.desc())
    ).first()


def get_model(session: Session, ref: str) -> Model:
    """Like :func:`find_model`, but raises :class:`ModelNotFound` naming the reference."""
    model = find_model(session, ref)
    if model is None:
        raise ModelNotFound(f"no registered model {ref!r}")
    return model


def models_with_sha256(session: Session, sha256: str) -> list[Model]:
    """Registered models whose file has this hash, the default first, then the oldest."""
    return list(
        session.scalars(
            select(Model)
            .where(Model.sha256 == sha256)
            .order_by(Model.is_default.desc(), Model.created_at)
        )
    )


def add_model(session: Session, model: Model, make_default: bool = False) -> Model:
    """Add a model row; it becomes the default when asked to or when no default exists.

    Raises:
        ModelExists: ``name:version`` is already registered.
    """
    if find_model(session, model.ref) is not None:
        raise ModelExists(f"model {model.ref} is already registered")
    model.is_default = False
    session.add(model)
    session.flush()
    if make_default:
        set_default(session, model)
    return model


def set_default(session: Session, model: Model) -> None:
    """Make ``model`` the one new jobs are pinned to when they name none."""
    session.execute(update(Model).where(Model.id != model.id).values(is_default=False))
    model.is_default = True
    session.flush()


def unfinished_job_ids(session: Session, model: Model) -> list[str]:
    """Jobs pinned to ``model`` that still have queued or running scans."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.model_id == model.id)
            .where(
                select(Scan.id)
                .where(Scan.job_id == Job.id, Scan.status.not_in(ScanStatus.terminal()))
                .exists()
            )
        )
    )


def remove_model(session: Session, model: Model) -> None:
    """Delete the row (finished jobs keep the model's name, version and SHA-256).

    Raises:
        ModelInUse: jobs pinned to it are unfinished.
    """
    busy = unfinished_job_ids(session, model)
    if busy:
        raise ModelInUse(
            f"model {model.ref} is pinned by {len(busy)} unfinished job(s), "
            f"e.g. {busy[0]}; remove it when they have finished"
        )
    session.delete(model)
    session.flush()


def unpinned_job_ids(session: Session, scan_ids: Sequence[str]) -> list[str]:
    """Jobs of these scans that are not pinned to a model yet.

    A job is pinned at submission when a model is registered; one accepted while none was
    (the API started before the configured model was registered) is pinned when its first
    scan is classified, by :func:`pin_jobs`.
    """
    return list(
        session.scalars(
            select(Job.id)
            .join(Scan, Scan.job_id == Job.id)
            .where(Scan.id.in_(list(scan_ids)), Job.model_sha256.is_(None))
            .distinct()
        )
    )


def pin_jobs(
    session: Session, job_ids: Sequence[str], model_id: Optional[str], identity: ModelIdentity
) -> int:
    """Pin unpinned jobs to a registered model (``model_id``), or, with None, to the
    untrained default; ``identity`` names it. Jobs pinned meanwhile (by another worker)
    keep their pin. Returns how many jobs this call pinned.
    """
    return rows_changed(
        session,
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.model_sha256.is_(None))
        .values(model_id=model_id, **identity.job_columns()),
    )
