"""Errors as RFC 9457 ``application/problem+json`` with ``status``, ``title`` and ``detail``.

The core's domain errors (:mod:`core.errors`) are mapped to statuses here, once.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WSGIResponse

from core.errors import (
    Conflict,
    Gone,
    IntakeError,
    Malformed,
    NotFound,
    OverQuota,
    TooLarge,
    Unavailable,
    Unsupported,
    Unusable,
)

log = logging.getLogger(__name__)


class Problem(Exception):
    """Raise from a view to answer with a problem document."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


STATUSES: dict[type[IntakeError], int] = {
    TooLarge: 413,
    Unsupported: 415,
    Malformed: 400,
    OverQuota: 429,
    Conflict: 409,
    NotFound: 404,
    Gone: 410,
    Unusable: 422,
    Unavailable: 503,
}


def status_of(error: IntakeError) -> int:
    """The HTTP status of a domain error (400 for a kind without one of its own)."""
    return next((status for kind, status in STATUSES.items() if isinstance(error, kind)), 400)


def as_problem(error: IntakeError) -> Problem:
    """The problem a domain error answers: its status, detail and members (``filename``,
    ``skipped``, ...), with ``Retry-After`` for a quota that frees up on its own."""
    retry_after = error.extra.get("retry_after")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return Problem(status_of(error), error.detail, headers, **error.extra)


def problem_response(status: int, detail: str, **extra: Any) -> Response:
    body = {
        "type": "about:blank",
        "status": status,
        "title": HTTPStatus(status).phrase,
        "detail": detail,
        **extra,
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        response = problem_response(exc.status, exc.detail, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(IntakeError)
    def _intake(exc: IntakeError) -> Response:
        return _problem(as_problem(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> WSGIResponse:
        # Built already (the rate limiter's 429 problem). Werkzeug types it as the sans-IO
        # base class its exceptions share; under Flask it is always a WSGI response.
        if isinstance(exc.response, WSGIResponse):
            return exc.response
        detail = exc.description or HTTPStatus(exc.code or 500).phrase
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the upload is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)"
        response = problem_response(exc.code or 500, detail)
        for name, value in exc.get_headers():  # e.g. a 405's Allow, which RFC 9110 requires
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "internal error; the server log has the details")
