"""The thin web tier: validate cheaply, store, write rows, enqueue, read.

Never imports the worker or TensorFlow; it enqueues by task name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from covidscan.settings import Settings, load_settings


class UnsortedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with keys in the order a view wrote them rather than sorted."""

    sort_keys = False


def create_app(config: Optional[Mapping[str, str] | Settings] = None) -> Flask:
    """Build the Flask app.

    Args:
        config: a Settings object, or a mapping of environment-style variables
            (``{"DATABASE_URL": ...}``) read instead of ``os.environ``; None reads the
            environment.
    """
    from api import (
        audit,
        auth,
        destinations,
        dicomweb,
        direct_uploads,
        docs,
        explanations,
        exports,
        extensions,
        health,
        jobs,
        limits,
        metrics,
        models,
        problems,
        retrievals,
        security,
        series,
        thumbnails,
        web,
        webhooks,
        workers,
    )

    settings = config if isinstance(config, Settings) else load_settings(config)
    app = Flask(__name__)
    if settings.proxy_hops:
        # Behind PROXY_HOPS trusted proxies (nginx in compose), the client's address and
        # scheme are what the nearest of them recorded, for per-address limits and cookies.
        # Flask's documented hook for WSGI middleware; mypy sees a method, not an attribute
        # meant to be replaced (mypy's answer: ignore it, python/mypy#7347).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.proxy_hops,
            x_proto=settings.proxy_hops,
        )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    # A bulk upload sends one part per slice: allow as many as a job may hold (Werkzeug's
    # default of 1,000 parts refused larger folders with a misleading 413).
    app.config["MAX_FORM_PARTS"] = settings.max_scans_per_job + 100
    app.json = UnsortedJSONProvider(app)
    logging.getLogger("api").setLevel(settings.log_level)
    extensions.init_app(app, settings)
    metrics.init_app(app)  # first: its timer sees requests that later hooks refuse
    problems.init_app(app)
    security.init_app(app, settings.trusted_hosts)
    auth.init_app(app)  # before the rate limiter, which counts per owner
    limits.init_app(app)
    app.register_blueprint(audit.bp)
    app.register_blueprint(destinations.bp)
    app.register_blueprint(explanations.bp)
    app.register_blueprint(exports.bp)
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(direct_uploads.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(retrievals.bp)
    app.register_blueprint(series.bp)
    app.register_blueprint(thumbnails.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(workers.bp)
    return app
