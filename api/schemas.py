"""The shapes of the API's bodies, as pydantic models, for the OpenAPI document.

The views build their JSON by hand (`api/serialize.py`); these models describe it and
nothing more. They are strict (every field required, no other field allowed), so the
contract tests fail when a view's output and its model part ways: a field added to a
response is added here too. Forms and query strings are described by models whose
optional fields are `None` by default.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from covidscan.settings import PRECISIONS
from db.audit import ACTIONS
from db.models import PRIORITIES

JobStatus = Literal["queued", "running", "succeeded", "partially_succeeded", "failed",
                    "cancelling", "cancelled"]
ScanStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Priority = Literal[PRIORITIES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Action = Literal[ACTIONS]  # type: ignore[valid-type]
Timestamp = Optional[str]  # ISO 8601 in UTC, `Z`-suffixed
# `name` or `name:version`, neither part empty nor padded with spaces (db/registry.parse_ref)
MODEL_REF = r"^[^:/\s\x00-\x1f\x7f-\x9f]+(:[^/\s\x00-\x1f\x7f-\x9f]+)?$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Responses


class Counts(Strict):
    """Scans of a job by status."""

    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class JobModel(Strict):
    """The model a job is pinned to (null until one is registered)."""

    name: str
    version: str
    sha256: str
    trained: bool


class JobLinks(Strict):
    """Where to read, page and cancel the job."""

    self: str
    results: str
    cancel: str


class Job(Strict):
    """A bulk job: its status is derived from its scans' counts."""

    id: str
    name: Optional[str]
    owner: Optional[str]
    status: JobStatus
    priority: Priority
    created_at: Timestamp
    cancelled_at: Timestamp
    expires_at: Timestamp = Field(description="when retention deletes the job; "
                                              "null with JOB_RETENTION=0")
    started_at: Timestamp
    finished_at: Timestamp
    counts: Counts
    model: Optional[JobModel]
    links: JobLinks


class SkippedEntry(Strict):
    """An archive entry that is not a scan (a text file, a nested or encrypted entry)."""

    filename: str
    reason: str


class SubmittedJob(Job):
    """The new job, and what of the upload was skipped."""

    skipped: list[SkippedEntry]


class JobList(Strict):
    """The caller's jobs, newest first."""

    jobs: list[Job]


class Result(Strict):
    """One scan's result; `probability_covid` and `label` are null until it succeeds."""

    scan_id: str
    filename: str
    status: ScanStatus
    probability_covid: Optional[float]
    label: Optional[str]
    error: Optional[str]
    model_name: Optional[str]
    model_version: Optional[str]
    model_sha256: Optional[str]
    engine: Optional[str]
    precision: Optional[str]
    preprocessing: Optional[str]
    worker: Optional[str]


class ResultsPage(Strict):
    """A page of results in upload order, and the job's status."""

    results: list[Result]
    next_cursor: Optional[str] = Field(description="pass as `cursor` for the next page; "
                                                   "null on the last")
    status: JobStatus


class ModelLinks(Strict):
    """Where the model's evaluation report is."""

    report: str


class RegisteredModel(Strict):
    """A model in the registry."""

    name: str
    version: str
    sha256: str
    format: str
    input_size: list[int] = Field(description="[height, width]")
    classes: list[str]
    positive_class: str
    preprocessing: str
    trained: bool
    source: str
    default: bool
    created_at: Timestamp
    has_report: bool
    trusted_code: bool
    links: ModelLinks


class ModelList(Strict):
    """The registered models."""

    models: list[RegisteredModel]
    default: Optional[str] = Field(description="`name:version` of the default model")
    note: Optional[str] = Field(None, description="present when no model is registered")


class Worker(Strict):
    """A live worker (heartbeat within 30 s)."""

    name: str
    ready: bool
    started_at: Timestamp
    heartbeat_at: Timestamp
    models: list[dict[str, Any]] = Field(description="per warm model: engines, precisions, "
                                                     "accuracy gates and measured images/s")


class WorkerList(Strict):
    """The live workers."""

    workers: list[Worker]


class AuditEvent(Strict):
    """Who did what to which job, and when."""

    id: int
    at: str
    key_id: Optional[str]
    owner: Optional[str]
    action: Action
    job_id: Optional[str]
    detail: Optional[dict[str, Any]]


class AuditPage(Strict):
    """Audit events, newest first."""

    events: list[AuditEvent]
    next_cursor: Optional[str]


class Health(Strict):
    """The process is alive."""

    status: Literal["ok"]


class ReadyWorkers(Strict):
    """Workers counted, not required: jobs queue while workers start."""

    ready: Optional[int] = Field(description="workers whose default model is warm; null "
                                             "when the database is unreachable")


class Readiness(Strict):
    """The database and Redis answer."""

    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="`database` and `redis`: `ok` or why not")
    workers: ReadyWorkers


class Problem(BaseModel):
    """An error, as RFC 9457 `application/problem+json`; some carry more members
    (`filename`, `skipped`, `model`, `retry_after`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    status: int
    title: str
    detail: str


# Requests


class SubmitJobForm(BaseModel):
    """A bulk job, as `multipart/form-data`."""

    files: list[bytes] = Field(min_length=1, description="one part per PNG or JPEG slice, or ZIP archive of "
                                           "them; told apart by content, not by name")
    name: Optional[str] = Field(None, max_length=200, description="a name for the job")
    model: Optional[str] = Field(None, pattern=MODEL_REF, description="`name` or `name:version` of a "
                                                   "registered model (default: the default)")
    precision: Optional[Precision] = Field(None, description="the numeric precision asked of "
                                                             "the model (default: the "
                                                             "worker's INFERENCE_PRECISION)")
    priority: Priority = Field("normal", description="waiting scans of higher priority jobs "
                                                     "are classified first")


class JobListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=500, description="how many jobs, newest first")


class ResultsQuery(BaseModel):
    format: Literal["json", "csv"] = Field("json", description="`csv` streams every row "
                                                               "with a header line")
    limit: int = Field(100, ge=1, le=1000, description="rows per page (JSON only)")
    cursor: Optional[int] = Field(None, ge=-1, le=2**31 - 1,
                                  description="`next_cursor` of the previous page")


class AuditQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000, description="events per page, newest first")
    cursor: Optional[int] = Field(None, ge=0, le=2**31 - 1,
                                  description="`next_cursor` of the previous page")
    owner: Optional[str] = Field(None, description="only this owner's events")
    job_id: Optional[str] = Field(None, description="only this job's events")
    action: Optional[Action] = Field(None, description="only this action")


class ModelRefPath(BaseModel):
    ref: str = Field(pattern=MODEL_REF, description="`name` or `name:version` of a registered "
                                                    "model")
