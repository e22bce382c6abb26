"""Grad-CAM heatmaps of scans: ask for one, read its state, get its pictures.

``POST /v1/scans/<id>/explanation`` queues one (202; a worker computes it with the job's
model in fp32), ``GET /v1/scans/<id>/explanation`` says where it stands and what made it,
``GET /v1/scans/<id>/heatmap`` returns the overlay PNG (``?view=heatmap`` the coloured map
alone, ``?view=slice`` the slice as the model saw it, ``?format=npy`` the map as an
array). Pictures are rendered by the worker; the API only serves the stored bytes.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.audit import audit
from api.auth import current_principal, owned_scan, requires
from api.extensions import db_session, services
from api.fields import validated
from api.limits import scan_quota
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import ExplanationState, HeatmapQuery
from api.serialize import iso
from db.explanations import GRADCAM, find_explanation, request_explanation
from db.models import Explanation, ScanStatus
from db.outbox import relay

log = logging.getLogger(__name__)
bp = Blueprint("explanations", __name__, url_prefix="/v1/scans")

VIEWS = {"overlay": "overlay_png", "heatmap": "heatmap_png", "slice": "slice_png"}
RETRY_SECONDS = "2"


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    scan_id = explanation.scan_id
    model = None
    if explanation.model_sha256 is not None:
        model = {
            "name": explanation.model_name,
            "version": explanation.model_version,
            "sha256": explanation.model_sha256,
            "trained": explanation.model_trained,
            "engine": explanation.engine,
            "precision": explanation.precision,
            "preprocessing": explanation.preprocessing,
        }
    return {
        "scan_id": scan_id,
        "method": explanation.method,
        "status": explanation.status.value,
        "error": explanation.error,
        "layer": explanation.layer,
        "class_name": explanation.class_name,
        "class_index": explanation.class_index,
        "score": explanation.score,
        "probability_covid": explanation.probability_covid,
        "size": None if explanation.height is None else [explanation.height, explanation.width],
        "model": model,
        "queued_at": iso(explanation.queued_at),
        "finished_at": iso(explanation.finished_at),
        "links": {
            "self": f"/v1/scans/{scan_id}/explanation",
            "heatmap": f"/v1/scans/{scan_id}/heatmap",
            "raw": f"/v1/scans/{scan_id}/heatmap?format=npy",
        },
    }


def _owned_explanation(scan_id: str) -> Explanation:
    scan = owned_scan(scan_id)
    explanation = find_explanation(db_session(), scan.id)
    if explanation is None:
        raise Problem(
            404,
            f"scan {scan_id!r} has no explanation; ask for one with "
            f"POST /v1/scans/{scan_id}/explanation",
        )
    return explanation


@bp.post("/<scan_id>/explanation")
@requires("submit")
@operation(
    "Ask for a Grad-CAM heatmap of a scan",
    responses={
        200: Reply("Done already", ExplanationState),
        202: Reply("Queued (or waiting, or running)", ExplanationState),
    },
    errors=(404, 409, 503),
)
def ask(scan_id: str) -> tuple[Response, int]:
    """Queue a Grad-CAM of the scan (202); one already waiting, running or done is kept."""
    scan = owned_scan(scan_id)
    session = db_session()
    if scan.status in (ScanStatus.FAILED, ScanStatus.CANCELLED):
        raise Problem(409, f"scan {scan_id!r} {scan.status.value}: it has no result to explain")
    priority = scan.job.priority
    explanation, queued = request_explanation(session, scan, priority, GRADCAM)
    if queued:  # refused: the session closes uncommitted, so nothing was queued
        scan_quota().charge(current_principal().owner, 0, explanations=1)
    audit("explanation.request", scan.job_id, {"scan_id": scan.id, "queued": queued}, commit=False)
    session.commit()
    if queued:
        svc = services()
        relay(svc.session_factory, svc.send_wakeups)
    done = explanation.status == ScanStatus.SUCCEEDED
    return jsonify(explanation_json(explanation)), 200 if done else 202


@bp.get("/<scan_id>/explanation")
@requires("read")
@operation(
    "A scan's explanation: its state and what made it",
    responses={200: ExplanationState},
    errors=(404,),
)
def get_explanation(scan_id: str) -> Response:
    return jsonify(explanation_json(_owned_explanation(scan_id)))


@bp.get("/<scan_id>/heatmap")
@requires("read")
@operation(
    "A scan's heatmap: a PNG, or the map as a NumPy array",
    query=HeatmapQuery,
    responses={
        200: Reply(
            "The picture (`format=png`) or the array (`format=npy`)",
            media={
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        ),
        202: Reply(
            "Not computed yet: the explanation's state",
            ExplanationState,
            headers={"Retry-After": "seconds to wait"},
        ),
    },
    errors=(404, 409),
)
def get_heatmap(scan_id: str) -> Response | tuple[Response, int, dict[str, str]]:
    """The stored picture (or array); 202 with the explanation's state while it is not ready."""
    query = validated(HeatmapQuery, request.args)
    fmt, view = query.format, query.view
    explanation = _owned_explanation(scan_id)
    if explanation.status == ScanStatus.FAILED or explanation.status == ScanStatus.CANCELLED:
        raise Problem(
            409,
            f"the explanation of scan {scan_id!r} {explanation.status.value}: "
            f"{explanation.error or 'no reason recorded'}",
        )
    if explanation.status != ScanStatus.SUCCEEDED:
        return jsonify(explanation_json(explanation)), 202, {"Retry-After": RETRY_SECONDS}
    audit("heatmap.view", explanation.job_id, {"scan_id": scan_id, "format": fmt})
    if fmt == "npy":
        response = Response(explanation.map_npy, mimetype="application/octet-stream")
        response.headers["Content-Disposition"] = f'attachment; filename="{scan_id}-gradcam.npy"'
    else:
        response = Response(getattr(explanation, VIEWS[view]), mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
