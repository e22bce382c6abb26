"""Errors as RFC 9457 ``application/problem+json`` with ``status``, ``title`` and ``detail``."""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from core.errors import (Conflict, DomainError, Malformed, NotFound, OverQuota, TooLarge,
                         Unavailable, Unsupported)

log = logging.getLogger(__name__)


class Problem(Exception):
    """Raise from a view to answer with a problem document."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


STATUS_OF = ((OverQuota, 429), (TooLarge, 413), (Unsupported, 415), (NotFound, 404),
             (Conflict, 409), (Unavailable, 503), (Malformed, 400))
"""The HTTP status of each domain error (the first class that matches)."""


def status_of(exc: DomainError) -> int:
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 400)


def problem_of(exc: DomainError) -> Problem:
    """A domain error as the problem the API answers (429 and 503 with Retry-After)."""
    retry = getattr(exc, "retry_after", None)
    if retry is None:
        return Problem(status_of(exc), exc.detail, **exc.extra)
    return Problem(status_of(exc), exc.detail, headers={"Retry-After": str(retry)},
                   retry_after=retry, **exc.extra)


def problem_response(status: int, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "status": status, "title": HTTPStatus(status).phrase,
            "detail": detail, **extra}
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

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        return _problem(problem_of(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if exc.response is not None:  # built already (the rate limiter's 429 problem)
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
