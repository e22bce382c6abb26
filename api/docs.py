"""``/openapi.json``, the API's OpenAPI 3.1 document, and ``/docs``, Swagger UI over it.

Swagger UI's files come from the ``flask-swagger-ui`` package (its ``dist`` folder, with
the licence), served from here: the page loads nothing from another site, and its one
script of our own (``static/docs.js``) keeps the Content-Security-Policy free of inline
code. Both are public: the contract is no secret, and every call made from the page
still needs a key (the page's Authorize button).
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, current_app, jsonify, render_template, send_from_directory

from api.auth import public
from api.extensions import services
from api.openapi import build_spec

bp = Blueprint("docs", __name__)
SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).resolve().parent / "dist"


@bp.get("/openapi.json")
@public
def openapi_json() -> Response:
    extras = services().extras
    if "openapi" not in extras:  # built once per app, on first request
        extras["openapi"] = build_spec(current_app)
    return jsonify(extras["openapi"])


@bp.get("/docs")
@public
def docs_page() -> str:
    return render_template("docs.html")


@bp.get("/docs/assets/<path:filename>")
@public
def docs_asset(filename: str) -> Response:
    """Swagger UI's scripts, styles and licence, from the installed package."""
    response = send_from_directory(SWAGGER_UI_DIR, filename, max_age=86400)
    if filename == "LICENSE":
        response.mimetype = "text/plain"
    return response
