"""``/v1/webhooks``: an owner's endpoints; ``/v1/jobs/<id>/deliveries``: what was sent.

An endpoint gets the events of every job of its owner; a job's ``callback_url`` gets that
job's. Each URL is checked against SSRF (:mod:`core.webhook_targets`) when it arrives,
and again before every delivery.
"""

from __future__ import annotations

from typing import Any, Optional

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.audit import audit
from api.auth import current_principal, owned_job, requires
from api.extensions import db_session, services
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import DeliveryList, Webhook, WebhookList, WebhookRequest
from api.serialize import iso
from core.webhook_targets import RefusedDestination, check
from covidscan.contract import DeliveryState
from covidscan.settings import ConfigError, webhook_secret
from db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from db.webhooks import endpoint_secret, job_deliveries, stop_endpoint_events

bp = Blueprint("webhooks", __name__)
MAX_ENDPOINTS = 20
NO_SECRET = (
    "the server has no WEBHOOK_SECRET to sign with: register the URL with a secret of "
    "its own (POST /v1/webhooks with url and secret), or ask the operator to set one"
)


def checked_url(field: str, raw: str) -> str:
    """``raw`` if it may receive webhooks; 400 naming ``field`` and the reason otherwise."""
    try:
        check(raw, services().settings.webhook_allowed_hosts)
    except RefusedDestination as exc:
        raise Problem(400, f"{field}: {exc}") from None
    return raw


def checked_callback_url(raw: str) -> Optional[str]:
    """A submission's optional ``callback_url`` (empty: None), checked for the caller.

    Raises:
        Problem: 400 for an internal address, or when nothing could sign its events.
    """
    if not raw:
        return None
    url = checked_url("callback_url", raw)
    owner = current_principal().owner
    if services().settings.webhook_secret is None and not endpoint_secret(db_session(), owner, url):
        raise Problem(400, f"callback_url: {NO_SECRET}")
    return url


def endpoint_json(row: WebhookEndpoint) -> dict[str, Any]:
    """Never the secret itself: whether there is one."""
    return {
        "id": row.id,
        "url": row.url,
        "own_secret": row.secret is not None,
        "created_at": iso(row.created_at),
    }


def _body() -> dict[str, str]:
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Problem(400, "send a JSON object with url (and optionally secret)")
        return {k: v for k, v in body.items() if isinstance(v, str)}
    return dict(request.form)


@bp.post("/v1/webhooks")
@requires("submit")
@operation(
    "Register a webhook endpoint",
    form=WebhookRequest,
    body=WebhookRequest,
    responses={201: Reply("Registered", Webhook)},
    errors=(409,),
)
def create_endpoint() -> tuple[Response, int]:
    """Register a URL for every job of the caller's owner, with an optional ``whsec_`` secret."""
    body = _body()
    url = checked_url("url", (body.get("url") or "").strip())
    secret = (body.get("secret") or "").strip() or None
    if secret is not None:
        try:
            secret = webhook_secret("secret", secret)
        except ConfigError as exc:
            raise Problem(400, str(exc)) from None
    elif services().settings.webhook_secret is None:
        raise Problem(400, NO_SECRET)
    owner = current_principal().owner
    session = db_session()
    count = session.scalar(select(func.count()).where(WebhookEndpoint.owner == owner)) or 0
    if count >= MAX_ENDPOINTS:
        raise Problem(409, f"an owner may register at most {MAX_ENDPOINTS} endpoints")
    row = WebhookEndpoint(owner=owner, url=url, secret=secret)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Problem(
            409, "this URL is registered already; delete it first to change its secret"
        ) from None
    audit(
        "webhook.create",
        None,
        {"endpoint_id": row.id, "own_secret": secret is not None},
        commit=False,
    )
    session.commit()
    return jsonify(endpoint_json(row)), 201


@bp.get("/v1/webhooks")
@requires("read")
@operation("The caller's webhook endpoints", responses={200: WebhookList})
def list_endpoints() -> Response:
    rows = db_session().scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.owner == current_principal().owner)
        .order_by(WebhookEndpoint.created_at)
    )
    return jsonify(webhooks=[endpoint_json(row) for row in rows])


@bp.delete("/v1/webhooks/<webhook_id>")
@requires("submit")
@operation("Delete a webhook endpoint", responses={204: Reply("Deleted")}, errors=(404,))
def delete_endpoint(webhook_id: str) -> tuple[str, int]:
    """Its pending events stop, but those of jobs whose own callback_url it is (they are
    signed with the server's secret from now on)."""
    session = db_session()
    row = session.get(WebhookEndpoint, webhook_id)
    principal = current_principal()
    if row is None or (row.owner != principal.owner and not principal.is_admin):
        raise Problem(404, f"no webhook with id {webhook_id!r}")
    stopped = stop_endpoint_events(session, row.owner, row.url)
    session.delete(row)
    audit(
        "webhook.delete", None, {"endpoint_id": webhook_id, "events_stopped": stopped}, commit=False
    )
    session.commit()
    return "", 204


def delivery_json(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "attempt": row.attempt,
        "at": iso(row.at),
        "status_code": row.status_code,
        "error": row.error,
        "duration_ms": row.duration_ms,
        "outcome": row.outcome,
        "next_attempt_at": iso(row.next_attempt_at),
    }


def event_json(event: WebhookEvent, attempts: list[WebhookDelivery]) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "url": event.url,
        "state": event.state,
        "created_at": iso(event.created_at),
        "next_attempt_at": iso(event.next_attempt_at)
        if event.state == DeliveryState.PENDING
        else None,
        "attempts": [delivery_json(row) for row in attempts],
    }


@bp.get("/v1/jobs/<job_id>/deliveries")
@requires("read")
@operation("A job's webhook deliveries", responses={200: DeliveryList}, errors=(404,))
def list_deliveries(job_id: str) -> Response:
    """The job's webhook events and every attempt to deliver each."""
    job = owned_job(job_id)
    return jsonify(
        events=[
            event_json(event, attempts) for event, attempts in job_deliveries(db_session(), job.id)
        ]
    )
