"""``/v1/models``: the registered models, the default marked, and their evaluation reports."""

from __future__ import annotations

from typing import Optional

from flask import Blueprint, Response, jsonify

from api.auth import ANY, requires
from api.extensions import db_session
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import ModelList, ModelRefPath, RegisteredModel
from api.serialize import model_json
from db.models import Model
from db.registry import RegistryError, default_model, find_model, list_models

bp = Blueprint("models", __name__, url_prefix="/v1/models")

UNTRAINED_NOTE = (
    "no model is registered: jobs run on the built-in resnet50-untrained, "
    "whose probabilities mean nothing"
)


def _find(ref: str, missing_status: int, missing_detail: str) -> Model:
    """The registered model ``ref`` names.

    Raises:
        Problem: 400 for a malformed reference; ``missing_status`` when none is registered.
    """
    try:
        model = find_model(db_session(), ref)
    except RegistryError as exc:
        raise Problem(400, str(exc), model=ref) from None
    if model is None:
        raise Problem(missing_status, missing_detail, model=ref)
    return model


def resolve_model(ref: Optional[str]) -> Optional[Model]:
    """The model a job asks for, else the default; None when nothing is registered.

    Raises:
        Problem: 400 naming a reference that is malformed or not registered.
    """
    if ref is None:
        return default_model(db_session())
    return _find(ref, 400, f"unknown model {ref!r}; GET /v1/models lists the registered ones")


@bp.get("")
@requires(ANY)
@operation("The registered models, the default named", responses={200: ModelList})
def list_registered() -> Response:
    session = db_session()
    models = [model_json(m) for m in list_models(session)]
    default = default_model(session)
    body = {"models": models, "default": default.ref if default else None}
    if default is None:
        body["note"] = UNTRAINED_NOTE
    return jsonify(body)


def _model_or_404(ref: str) -> Model:
    return _find(ref, 404, f"no registered model {ref!r}")


@bp.get("/<ref>")
@requires(ANY)
@operation(
    "One registered model", responses={200: RegisteredModel}, errors=(404,), path=ModelRefPath
)
def get_model(ref: str) -> Response:
    return jsonify(model_json(_model_or_404(ref)))


@bp.get("/<ref>/report")
@requires(ANY)
@operation(
    "A model's evaluation report",
    errors=(404,),
    path=ModelRefPath,
    responses={
        200: Reply(
            "The report covidscan evaluate wrote",
            media={"application/json": {"schema": {"type": "object"}}},
        )
    },
)
def get_report(ref: str) -> Response:
    model = _model_or_404(ref)
    if model.report is None:
        raise Problem(404, f"model {model.ref} has no evaluation report")
    return jsonify(model.report)
