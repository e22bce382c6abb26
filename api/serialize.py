"""JSON and CSV shapes of jobs and results."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from db.jobs import JobSummary
from db.models import Model, Scan
from db.models import iso_utc as iso  # the answers' one time format (api.* import it here)
from db.registry import describe

RESULT_COLUMNS = (
    "scan_id",
    "filename",
    "status",
    "probability_covid",
    "label",
    "error",
    "model_name",
    "model_version",
    "model_sha256",
    "engine",
    "precision",
    "preprocessing",
    "worker",
    "study_uid",
    "series_uid",
    "instance_number",
    "slice_position",
)


def job_json(summary: JobSummary) -> dict[str, Any]:
    job = summary.job
    model = None
    if job.model_sha256 is not None:
        model = {
            "name": job.model_name,
            "version": job.model_version,
            "sha256": job.model_sha256,
            "trained": job.model_trained,
        }
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "status": summary.status,
        "priority": summary.priority,
        "created_at": iso(job.created_at),
        "cancelled_at": iso(job.cancelled_at),
        "expires_at": iso(job.expires_at),
        "started_at": iso(summary.started_at),
        "finished_at": iso(summary.finished_at),
        "counts": summary.counts.as_dict(),
        "model": model,
        "open_until": iso(job.open_until),
        "callback_url": job.callback_url,
        "explain": job.explain,
        "intended_use": job.intended_use,
        "export_to": job.export_to or [],
        "links": {
            "self": f"/v1/jobs/{job.id}",
            "results": f"/v1/jobs/{job.id}/results",
            "series": f"/v1/jobs/{job.id}/series",
            "cancel": f"/v1/jobs/{job.id}/cancel",
            "deliveries": f"/v1/jobs/{job.id}/deliveries",
        },
    }


def model_json(model: Model) -> dict[str, Any]:
    return {
        **describe(model),
        "created_at": iso(model.created_at),
        "links": {"report": f"/v1/models/{model.name}:{model.version}/report"},
    }


def result_row(scan: Scan) -> dict[str, Any]:
    return {
        "scan_id": scan.id,
        "filename": scan.filename,
        "status": scan.status.value,
        "probability_covid": scan.probability_covid,
        "label": scan.label,
        "error": scan.error,
        "model_name": scan.model_name,
        "model_version": scan.model_version,
        "model_sha256": scan.model_sha256,
        "engine": scan.engine,
        "precision": scan.precision,
        "preprocessing": scan.preprocessing,
        "worker": scan.worker,
        # DICOM slices only (None for PNG and JPEG); no patient identifiers are kept.
        "study_uid": scan.study_uid,
        "series_uid": scan.series_uid,
        "instance_number": scan.instance_number,
        "slice_position": scan.slice_position,
    }


# OWASP's CSV-injection rule: a spreadsheet treats a cell starting with one of these as a
# formula (or a field break); such cells get a leading apostrophe.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that no spreadsheet evaluates; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_lines(scans: Iterable[Scan]) -> Iterator[str]:
    """The results as CSV text, a header line first, one chunk per row; no cell is a formula."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for scan in scans:
        writer.writerow({key: spreadsheet_safe(value) for key, value in result_row(scan).items()})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()
