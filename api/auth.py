"""Who is asking: API keys (``Authorization: Bearer``), browser sessions, scopes, ownership.

Every view declares what it needs with :func:`requires` (a scope, or any signed-in
principal) or :func:`public`; a view that declares nothing is for administrators only.
Jobs are looked up for the current principal by :func:`owned_job` (and scans by
:func:`owned_scan`): another owner's job answers 404 exactly as a missing one does.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar
from urllib.parse import quote

from flask import Flask, current_app, g, redirect, request
from flask.typing import ResponseReturnValue

from api.extensions import db_session, services
from api.limits import failed_sign_ins
from api.problems import Problem, problem_response
from db.jobs import ANY_OWNER, find_job
from db.keys import authenticate, find_session
from db.models import ApiKey, Job, Scan

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
SESSION_COOKIE = "covidscan_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY = "any"
PUBLIC = "public"
PUBLIC_ENDPOINTS = frozenset({"static"})  # the pages' CSS and scripts
UNAUTHENTICATED = (
    "a valid API key is required: send 'Authorization: Bearer csk_…' "
    "(an unknown, revoked or expired key is refused alike)"
)
LOCAL_OWNER = "local"


@dataclass(frozen=True)
class Principal:
    """The caller: a key (or, with AUTH=off, the local user) and how it signed in."""

    key_id: Optional[str]
    owner: str
    scopes: frozenset[str]
    via: str  # "bearer", "session" or "auth-off"
    csrf_token: Optional[str] = None

    @classmethod
    def of_key(cls, key: ApiKey, via: str, csrf_token: Optional[str] = None) -> Principal:
        return cls(key.id, key.owner, key.scope_set, via, csrf_token)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return scope == ANY or self.is_admin or scope in self.scopes

    @property
    def job_owner(self) -> object:
        """What job queries filter on: this owner, or every owner for an administrator."""
        return ANY_OWNER if self.is_admin else self.owner


def requires(scope: str) -> Callable[[F], F]:
    """Declare the scope a view needs (``"submit"``, ``"read"``, ``"admin"``) or ``ANY``."""

    def mark(view: F) -> F:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def public(view: F) -> F:
    """Declare a view that anyone may call (health checks, the sign-in page)."""
    view.required_scope = PUBLIC  # type: ignore[attr-defined]
    return view


def current_principal() -> Principal:
    """The caller of this request (set before the view runs)."""
    principal = g.get("principal")
    if principal is None:
        raise Problem(401, UNAUTHENTICATED)
    return principal


def owned_job(job_id: str) -> Job:
    """The job ``job_id`` if the caller may see it.

    Raises:
        Problem: 404 when it does not exist or belongs to another owner (the same answer).
    """
    job = find_job(db_session(), job_id, current_principal().job_owner)
    if job is None:
        raise Problem(404, f"no job with id {job_id!r}")
    return job


def owned_scan(scan_id: str) -> Scan:
    """The scan ``scan_id`` if the caller may see its job; 404 otherwise (see :func:`owned_job`)."""
    session = db_session()
    scan = session.get(Scan, scan_id)
    if scan is None or find_job(session, scan.job_id, current_principal().job_owner) is None:
        raise Problem(404, f"no scan with id {scan_id!r}")
    return scan


def client_address() -> str:
    """The caller's address (behind PROXY_HOPS trusted proxies, the one they were given)."""
    return request.remote_addr or "unknown"


def _is_loopback(address: Optional[str]) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _bearer_token() -> Optional[str]:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _unauthenticated(for_page: bool) -> ResponseReturnValue:
    if for_page and request.method in SAFE_METHODS:
        return redirect(f"/login?next={quote(request.full_path.rstrip('?'), safe='/')}", 303)
    response = problem_response(401, UNAUTHENTICATED)
    response.headers["WWW-Authenticate"] = 'Bearer realm="covidscan"'
    return response


def _identify() -> Optional[Principal]:
    """The principal the request proves, or None; raises Problem 403 on a missing CSRF token."""
    session = db_session()
    token = _bearer_token()
    if token is not None:
        key = authenticate(session, token)
        return None if key is None else Principal.of_key(key, "bearer")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    web_session = find_session(session, cookie)
    if web_session is None:
        return None
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
        if not hmac.compare_digest(sent.encode(), web_session.csrf_token.encode()):
            raise Problem(
                403,
                f"this request needs the page's CSRF token in the {CSRF_HEADER} "
                "header; reload the page and try again",
            )
    return Principal.of_key(web_session.key, "session", web_session.csrf_token)


def _authorise() -> Optional[ResponseReturnValue]:
    """``before_request``: establish the principal and check the view's scope."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return None  # no such route: Flask answers 404 (or 405)
    scope = getattr(view, "required_scope", "admin")
    if scope == PUBLIC or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    settings = services().settings
    if not settings.auth_enabled:
        if not _is_loopback(request.remote_addr):
            raise Problem(403, "AUTH=off serves loopback clients only")
        g.principal = Principal(None, LOCAL_OWNER, frozenset({"admin"}), "auth-off")
        return None
    # Wrong keys are counted per address; an expired session cookie is not (a page left
    # open keeps polling with one), and a request with no credentials costs nothing.
    with_key = _bearer_token() is not None
    if with_key:
        failed_sign_ins().check(client_address())
    principal = _identify()
    if principal is None:
        if with_key:
            failed_sign_ins().record(client_address())
        return _unauthenticated(for_page=(request.endpoint or "").startswith("web."))
    g.principal = principal
    if not principal.allows(scope):
        raise Problem(
            403,
            f"this key lacks the {scope!r} scope (it has {', '.join(sorted(principal.scopes))})",
        )
    return None


def cookie_secure() -> bool:
    """Whether the session cookie gets ``Secure``: SESSION_COOKIE_SECURE, or auto (under TLS)."""
    mode = services().settings.session_cookie_secure
    return request.is_secure if mode == "auto" else mode == "true"


def init_app(app: Flask) -> None:
    """Register the check; call before any other ``before_request`` user (the rate limiter)."""
    app.before_request(_authorise)
    settings = app.extensions["covidscan"].settings
    if not settings.auth_enabled:
        log.warning(
            "AUTH=off: NO AUTHENTICATION. Every loopback client is an administrator "
            "and sees every job. Never use this beyond one machine (API_HOST=%s).",
            settings.api_host,
        )
