"""``/v1/destinations``: the PACS results are delivered to (administrators only).

Credentials sent here are sealed with PHI_KEY before they are stored and never returned:
answers say only ``has_credentials``. Probing a destination (C-ECHO, QIDO-RS) is the
DICOM network adapter's: ``covidscan destinations test NAME``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from api.audit import audit
from api.auth import requires
from api.extensions import db_session, services
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import (
    DestinationInfo,
    DestinationList,
    DestinationNamePath,
    DestinationRequest,
    DicomDestinationRequest,
    DicomWebDestinationRequest,
)
from core.destinations import (
    DestinationError,
    DestinationSpec,
    describe,
    dicom_spec,
    dicomweb_spec,
    register,
)
from db.destinations import DestinationExists, list_destinations, remove_destination

bp = Blueprint("destinations", __name__, url_prefix="/v1/destinations")


def _spec(body: DicomDestinationRequest | DicomWebDestinationRequest) -> DestinationSpec:
    """The destination the body asks for. Raises Problem 400 naming the wrong field."""
    try:
        if isinstance(body, DicomDestinationRequest):
            return dicom_spec(
                body.name,
                body.ae_title,
                body.host,
                body.port,
                tls=body.tls,
                commitment=body.commitment,
            )
        return dicomweb_spec(body.name, body.url, token=body.token, basic=body.basic)
    except DestinationError as exc:
        raise Problem(400, str(exc)) from None


def _refusal(error: Any) -> str:
    """A validation error of the request in an administrator's words."""
    kinds: dict[str, type[BaseModel]] = {
        "dicom": DicomDestinationRequest,
        "dicomweb": DicomWebDestinationRequest,
    }
    loc = [str(part) for part in error["loc"]]
    kind = loc.pop(0) if loc and loc[0] in kinds else None
    field = ".".join(loc) or "body"
    if kind is not None and error["type"] == "missing":
        return f"a {kind} destination needs {field}"
    if kind is not None and error["type"] == "extra_forbidden":
        other = next((k for k, model in kinds.items() if field in model.model_fields), None)
        if other is not None:
            return f"{field} is for {other} destinations, not {kind} ones"
        return f"{field} is not a field of a {kind} destination"
    return f"{field}: {error['msg']}"


@bp.get("")
@requires("admin")
@operation("The PACS destinations (administrators)", responses={200: DestinationList})
def list_all() -> Response:
    """Every destination, by name; credentials never, only ``has_credentials``."""
    return jsonify(destinations=[describe(row) for row in list_destinations(db_session())])


@bp.post("")
@requires("admin")
@operation(
    "Register a PACS destination (administrators)",
    body=DestinationRequest,
    responses={201: Reply("Registered", DestinationInfo)},
    errors=(409,),
)
def create() -> tuple[Response, int]:
    """A DICOM destination (AE title, host, port, optional TLS and Storage Commitment) or a
    DICOMweb one (base URL, optional bearer token or basic auth, sealed with PHI_KEY)."""
    raw = request.get_json(silent=True) if request.is_json else None
    if not isinstance(raw, dict):
        raise Problem(400, "send a JSON object with name, kind and the destination's fields")
    try:
        body = DestinationRequest.model_validate(raw).root
    except ValidationError as exc:
        raise Problem(400, _refusal(exc.errors(include_url=False)[0])) from None
    spec = _spec(body)
    session = db_session()
    try:
        row = register(session, spec, services().settings.phi_key)
    except DestinationError as exc:
        raise Problem(400, str(exc)) from None
    except DestinationExists as exc:
        session.rollback()
        raise Problem(409, str(exc)) from None
    audit(
        "destination.add",
        None,
        {"name": row.name, "kind": row.kind.value, "credentials": row.credentials is not None},
        commit=False,
    )
    session.commit()
    return jsonify(describe(row)), 201


@bp.delete("/<name>")
@requires("admin")
@operation(
    "Remove a PACS destination (administrators)",
    responses={204: Reply("Removed")},
    path=DestinationNamePath,
    errors=(404,),
)
def delete(name: str) -> tuple[str, int]:
    session = db_session()
    row = remove_destination(session, name)
    if row is None:
        raise Problem(404, f"no destination named {name!r}")
    audit("destination.remove", None, {"name": row.name, "kind": row.kind.value}, commit=False)
    session.commit()
    return "", 204
