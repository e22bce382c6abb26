"""The web page: sign-in (``/login``), bulk upload (``/``), recent jobs (``/jobs``) and one
job (``/jobs/<id>``).

The pages are thin shells; the scripts in ``api/static`` talk to the JSON API
(``/v1/jobs``), so the browser sees exactly what any other client sees. A browser signs
in once with an API key and then holds a session cookie (``HttpOnly``,
``SameSite=Strict``, ``Secure`` under TLS); its scripts send the page's CSRF token with
every state-changing request.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request
from werkzeug.wrappers import Response as WSGIResponse

from api.auth import (
    ANY,
    SESSION_COOKIE,
    client_address,
    cookie_secure,
    current_principal,
    owned_job,
    public,
    requires,
)
from api.extensions import db_session, services
from api.limits import failed_sign_ins
from api.problems import Problem
from api.serialize import job_json
from covidscan.contract import ExportState, JobStatus, ScanStatus
from db.audit import record
from db.jobs import recent_job_summaries, summarise_jobs
from db.keys import authenticate, close_session, open_session

bp = Blueprint("web", __name__)

RECENT_JOBS = 50
LOGIN_CSRF_COOKIE = "covidscan_login"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def page_contract() -> dict[str, Any]:
    """The states the page's scripts compare with, as the API spells them: every page carries
    them (``<html data-contract>``), so that no script spells a status of its own."""
    return {
        "JobStatus": {status.name: status.value for status in JobStatus},
        "ScanStatus": {status.name: status.value for status in ScanStatus},
        "ExportState": {state.name: state.value for state in ExportState},
        "finishedJobStatuses": [status.value for status in JobStatus.finished()],
    }


@bp.app_context_processor
def _contract() -> dict[str, Any]:
    return {"contract": page_contract()}


@bp.get("/")
@requires(ANY)
def upload_page() -> str:
    settings = services().settings
    return render_template(
        "upload.html",
        max_upload_bytes=settings.max_upload_bytes,
        max_scan_bytes=settings.max_scan_bytes,
        max_scans=settings.max_scans_per_job,
    )


@bp.get("/jobs")
@requires("read")
def jobs_page() -> str:
    summaries = recent_job_summaries(db_session(), RECENT_JOBS, current_principal().job_owner)
    return render_template("jobs.html", jobs=[job_json(summary) for summary in summaries])


@bp.get("/jobs/<job_id>")
@requires("read")
def job_page(job_id: str) -> tuple[str, int]:
    try:
        job = owned_job(job_id)
    except Problem:
        return render_template("missing.html", job_id=job_id), 404
    return render_template("job.html", job=job_json(summarise_jobs(db_session(), [job])[0])), 200


def safe_next(raw: str) -> str:
    """``raw`` as a path on this site, else ``/``.

    Checked after the normalisation a browser (and Werkzeug) applies, so what is checked is
    what is followed: control characters (tab, CR, LF…) are dropped, spaces around it too,
    and a backslash is a slash. ``/%09/evil.example/`` (a tab) is then ``//evil.example/``,
    another site, and refused.
    """
    target = CONTROL_CHARACTERS.sub("", raw).strip(" ").replace("\\", "/")
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return target


def _next_path() -> str:
    """Where to go after signing in: a path on this site, never another site."""
    return safe_next(request.values.get("next") or "/")


def _login_form(error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = Response(
        render_template("login.html", login_token=token, next=_next_path(), error=error),
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=cookie_secure(),
        path="/login",
    )
    return response


@bp.get("/login")
@public
def login_page() -> Response:
    return _login_form()


@bp.post("/login")
@public
def login() -> WSGIResponse:
    """Check the key and open a session; the form carries a token matched to a cookie
    set with it (double submit), so another site cannot sign a browser in."""
    sent = request.form.get("login_token", "")
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_form("The sign-in form expired; try again.", 403)
    try:
        failed_sign_ins().check(client_address())
    except Problem as refused:
        form = _login_form(refused.detail, 429)
        form.headers.update(refused.headers)
        return form
    session = db_session()
    key = authenticate(session, request.form.get("api_key", "").strip())
    if key is None:
        failed_sign_ins().record(client_address())
        return _login_form("That key is not valid: unknown, revoked or expired.", 401)
    token, _row = open_session(session, key, services().settings.session_hours)
    record(session, "session.open", key_id=key.id, owner=key.owner)
    session.commit()
    response = redirect(_next_path(), 303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=cookie_secure(),
        max_age=services().settings.session_hours * 3600,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@bp.post("/logout")
@requires(ANY)
def logout() -> WSGIResponse:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = db_session()
        close_session(session, cookie)
        session.commit()
    response = redirect("/login", 303)
    response.delete_cookie(SESSION_COOKIE)
    return response
