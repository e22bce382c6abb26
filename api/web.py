"""The web page: bulk upload (``/``), recent jobs (``/jobs``) and one job (``/jobs/<id>``).

The pages are thin shells; the scripts in ``api/static`` talk to the JSON API
(``/v1/jobs``), so the browser sees exactly what any other client sees.
"""
from __future__ import annotations

from flask import Blueprint, render_template

from api.extensions import db_session, services
from api.serialize import job_json
from db.jobs import recent_job_summaries, summarise_job

bp = Blueprint("web", __name__)

RECENT_JOBS = 50


@bp.get("/")
def upload_page() -> str:
    settings = services().settings
    return render_template("upload.html", max_upload_bytes=settings.max_upload_bytes,
                           max_scan_bytes=settings.max_scan_bytes,
                           max_scans=settings.max_scans_per_job)


@bp.get("/jobs")
def jobs_page() -> str:
    jobs = [job_json(summary) for summary in recent_job_summaries(db_session(), RECENT_JOBS)]
    return render_template("jobs.html", jobs=jobs)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> tuple[str, int]:
    summary = summarise_job(db_session(), job_id)
    if summary is None:
        return render_template("missing.html", job_id=job_id), 404
    return render_template("job.html", job=job_json(summary)), 200
