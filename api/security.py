"""Response headers that keep the page and the API from being framed, sniffed or scripted.

The pages load scripts and styles only from ``/static`` (no inline script or style), so
the Content-Security-Policy needs no ``'unsafe-inline'``. ``TRUSTED_HOSTS`` (Flask's own
check) answers 400 to a request whose ``Host`` header is not listed, which stops DNS
rebinding from reaching the API through a browser.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Request, Response, request

from api.problems import Problem

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


NESTED_TOO_DEEPLY = "the JSON body is nested too deeply"


class ApiRequest(Request):
    """Flask's request, whose JSON body nested deeper than the parser's recursion limit is a
    400 problem in every route (with ``silent=True`` too), not a ``RecursionError`` (500)."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            raise Problem(400, NESTED_TOO_DEEPLY) from None


WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+(\.0*)?")


def whole_number(raw: str) -> int:
    """A query parameter the document declares an integer: ``300``, or ``300.0`` (in JSON
    Schema a number with a zero fraction is an integer, and clients may write it so).

    Raises:
        ValueError: anything else.
    """
    text = raw.strip()
    if not WHOLE_NUMBER.fullmatch(text):
        raise ValueError(raw)
    return int(text.split(".", 1)[0])


def refuse_nul_characters() -> None:
    """400 for a NUL in the path, the query or a form field: no id, name or reference holds
    one, and PostgreSQL cannot even compare text with one (it would be a 500)."""
    texts = [request.path, *request.args.values()]
    if request.method == "POST" and request.mimetype in (
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ):
        texts.extend(request.form.values())
    if any("\x00" in text for text in texts):
        raise Problem(400, "the request contains a NUL character in its path, query or form fields")


def refuse_repeated_parameters() -> None:
    """400 for an API query parameter given twice: every one is a single value, and which of
    two a proxy, a cache and the API would each pick is anyone's guess."""
    if request.path.startswith("/v1/"):
        repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
        if repeated:
            raise Problem(400, f"query parameters given more than once: {', '.join(repeated)}")


def init_app(app: Flask, trusted_hosts: tuple[str, ...] | None) -> None:
    """Check the Host header against ``trusted_hosts`` (None: any), refuse NUL characters,
    repeated API query parameters and JSON nested too deeply, and add the headers."""
    app.request_class = ApiRequest
    app.config["TRUSTED_HOSTS"] = list(trusted_hosts) if trusted_hosts is not None else None
    app.before_request(refuse_nul_characters)
    app.before_request(refuse_repeated_parameters)

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
