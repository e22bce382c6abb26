"""Response headers that keep the page and the API from being framed, sniffed or scripted.

The pages load scripts and styles only from ``/static`` (no inline script or style), so
the Content-Security-Policy needs no ``'unsafe-inline'``. ``TRUSTED_HOSTS`` (Flask's own
check) answers 400 to a request whose ``Host`` header is not listed, which stops DNS
rebinding from reaching the API through a browser.
"""
from __future__ import annotations

from flask import Flask, Response

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def init_app(app: Flask, trusted_hosts: tuple[str, ...] | None) -> None:
    """Check the Host header against ``trusted_hosts`` (None: any) and add the headers."""
    app.config["TRUSTED_HOSTS"] = list(trusted_hosts) if trusted_hosts is not None else None

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
