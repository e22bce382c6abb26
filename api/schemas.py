"""The shapes of the API's bodies, as pydantic models, for the OpenAPI document.

The views build their JSON by hand (`api/serialize.py`); these models describe it. They
are strict (every field required, no other field allowed), so the contract tests fail when
a view's output and its model part ways: a field added to a response is added here too.
Forms, JSON bodies and query strings are described by models that the views also read them
with (`api.fields.validated`), so what the document says is what the API checks; their
optional fields are `None` by default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, model_validator

from api.fields import MODEL_REF, NO_NUL, Fields, Flag
from covidscan.contract import (
    DeliveryOutcome,
    DeliveryState,
    ExportKind,
    ExportState,
    JobStatus,
    RetrievalOutcome,
    RetrievalStatus,
    ScanStatus,
    UploadStatus,
)
from covidscan.settings import PRECISIONS
from db.audit import ACTIONS
from db.explanations import METHODS
from db.models import PRIORITIES

Priority = Literal[PRIORITIES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Action = Literal[ACTIONS]  # type: ignore[valid-type]
Timestamp = Optional[str]  # ISO 8601 in UTC, `Z`-suffixed
ExplainMethod = Literal[METHODS]  # type: ignore[valid-type]
MAX_NAME_LENGTH = 200


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
    """Where to read, page and cancel the job, its DICOM series and webhook deliveries."""

    self: str
    results: str
    series: str
    cancel: str
    deliveries: str


class IntendedUse(Strict):
    """The intended-use rules in force when the job was submitted: DICOM instances outside
    them are skipped with the reason (PNG and JPEG slices declare nothing to check)."""

    skip_localizers: bool = Field(description="localizers and scouts (ImageType LOCALIZER)")
    axial_tolerance_degrees: float = Field(
        description="slices whose normal is further from the patient's head-foot axis are not axial"
    )
    max_slice_thickness_mm: float = Field(description="`MAX_SLICE_THICKNESS_MM`")
    min_series_slices: int = Field(
        description="`MIN_SERIES_SLICES`: a series of fewer slices gets no series result"
    )


class Job(Strict):
    """A bulk job: its status is derived from its scans' counts."""

    id: str
    name: Optional[str]
    owner: Optional[str]
    status: JobStatus
    priority: Priority
    created_at: Timestamp
    cancelled_at: Timestamp
    expires_at: Timestamp = Field(
        description="when retention deletes the job; null with JOB_RETENTION=0"
    )
    started_at: Timestamp
    finished_at: Timestamp
    counts: Counts
    model: Optional[JobModel]
    open_until: Timestamp = Field(
        description="while the job takes more scans (`open`): when "
        "the sweep seals it unless a part comes first; "
        "null once sealed"
    )
    callback_url: Optional[str] = Field(description="gets a signed event when the job ends")
    explain: Optional[ExplainMethod] = Field(
        description="the heatmap made of every scan, null for none"
    )
    intended_use: Optional[IntendedUse] = Field(
        description="the rules the job was submitted under; null for a job from before "
        "they were recorded"
    )
    export_to: list[str] = Field(
        description="the destinations its series' results are sent to (`GET /v1/jobs/{job_id}/"
        "exports` shows each delivery)"
    )
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
    study_uid: Optional[str] = Field(description="DICOM slices only; null otherwise")
    series_uid: Optional[str]
    instance_number: Optional[int]
    slice_position: Optional[float] = Field(description="along the patient axis, in mm")
    explanation: Optional[ScanStatus] = Field(
        description="the state of the scan's heatmap; null when none was asked for"
    )


class ResultsPage(Strict):
    """A page of results in upload order, and the job's status."""

    results: list[Result]
    next_cursor: Optional[str] = Field(
        description="pass as `cursor` for the next page; null on the last"
    )
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
    dicom_window: Optional[list[float]] = Field(
        description="[width, level] for DICOM slices; null: the lung window"
    )
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
    models: list[dict[str, Any]] = Field(
        description="per warm model: engines, precisions, accuracy gates and measured images/s"
    )


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


class Version(Strict):
    """Which covidscan this server runs: the version in pyproject.toml."""

    version: str


class ReadyWorkers(Strict):
    """Workers counted, not required: jobs queue while workers start."""

    ready: Optional[int] = Field(
        description="workers whose default model is warm; null when the database is unreachable"
    )


class Readiness(Strict):
    """The database, Redis and the blob store answer."""

    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(
        description="`database`, `redis` and `blob_store`: `ok` or why not"
    )
    workers: ReadyWorkers


class UploadPart(Strict):
    """Where to PUT one slice's bytes (signed for its size; send no API key there)."""

    filename: str
    size: int
    method: Literal["PUT"]
    url: str
    headers: dict[str, str]


class DirectUpload(Strict):
    """A two-step upload: PUT each slice to its URL, then POST `start_url`."""

    id: str
    status: UploadStatus
    expires_in: int = Field(description="seconds the upload URLs stay valid")
    parts: list[UploadPart]
    start_url: str


class SeriesSlice(Strict):
    """A slice of a series, in order along the patient axis."""

    scan_id: str
    instance_number: Optional[int]
    frame: Optional[int]
    slice_position: Optional[float]
    status: ScanStatus
    probability_covid: Optional[float]


class Series(Strict):
    """A DICOM series of the job and its P(COVID) under `rule`."""

    study_uid: str
    series_uid: str
    modality: Optional[str]
    slice_count: int
    succeeded: int
    failed: int
    pending: int
    probability_covid: Optional[float]
    label: Optional[str]
    rule: str
    skipped: Optional[str] = Field(
        description="why the series has no result (fewer slices than the job's "
        "`min_series_slices`); null when it has one"
    )
    receiving: bool = Field(
        description="the job is still open: more instances of the series may arrive (a "
        "C-STORE job stays open until its series are complete), so its result may change"
    )
    expected_slices: Optional[int] = Field(
        None,
        description="the instances the sender said the series holds "
        "(NumberOfSeriesRelatedInstances, by C-FIND); absent when it did not say",
    )
    slices: Optional[list[SeriesSlice]] = Field(None, description="with `?slices=1` only")


class SeriesList(Strict):
    """The job's DICOM series (PNG and JPEG scans belong to none)."""

    series: list[Series]
    rule: Optional[str] = Field(
        description="the series rule recorded with the job; null for a job without DICOM slices"
    )


class ExplanationModel(Strict):
    """The model and the way it ran for the explanation."""

    name: Optional[str]
    version: Optional[str]
    sha256: str
    trained: Optional[bool]
    engine: Optional[str]
    precision: Optional[str]
    preprocessing: Optional[str]


class ExplanationLinks(Strict):
    """Where the explanation, its picture and its array are."""

    self: str
    heatmap: str
    raw: str


class ExplanationState(Strict):
    """A scan's Grad-CAM heatmap: its state and what made it."""

    scan_id: str
    method: Literal[METHODS]  # type: ignore[valid-type]
    status: ScanStatus
    error: Optional[str]
    layer: Optional[str]
    class_name: Optional[str]
    class_index: Optional[int]
    score: Optional[str] = Field(
        description="what the gradients were taken of: `logit` or `probability`"
    )
    probability_covid: Optional[float]
    size: Optional[list[int]] = Field(description="[height, width] of the map")
    model: Optional[ExplanationModel]
    queued_at: Timestamp
    finished_at: Timestamp
    links: ExplanationLinks


class Webhook(Strict):
    """A registered webhook endpoint (its secret is never shown)."""

    id: str
    url: str
    own_secret: bool = Field(description="signed with its own secret, else the server's")
    created_at: Timestamp


class WebhookList(Strict):
    """The caller's webhook endpoints."""

    webhooks: list[Webhook]


class DeliveryAttempt(Strict):
    """One attempt to deliver an event."""

    attempt: int
    at: Timestamp
    status_code: Optional[int]
    error: Optional[str]
    duration_ms: Optional[int]
    outcome: DeliveryOutcome
    next_attempt_at: Timestamp


class DeliveryEvent(Strict):
    """A webhook event of the job and every attempt to deliver it."""

    id: str
    type: str
    url: str
    state: DeliveryState
    created_at: Timestamp
    next_attempt_at: Timestamp
    attempts: list[DeliveryAttempt]


class DeliveryList(Strict):
    """The job's webhook events."""

    events: list[DeliveryEvent]


class ExportInfo(Strict):
    """One delivery of a series' result to a PACS destination."""

    id: str
    destination: str = Field(description="the registered destination's name")
    kind: ExportKind = Field(description="`sr`: the series' Structured Report")
    study_uid: Optional[str]
    series_uid: str = Field(description="the source series the result is about")
    results_series_uid: str = Field(description="the series the result instance is sent in")
    sop_instance_uid: str = Field(description="the instance sent, the same on every attempt")
    state: ExportState = Field(
        description="`pending` (waiting or to be tried again), `stored` (accepted by the "
        "destination), `committed` (its Storage Commitment report confirmed it) or `failed`"
    )
    attempts: int
    error: Optional[str] = Field(
        description="in DICOM or HTTP terms: why it failed, why its last attempt did not "
        "succeed (pending), or why a stored one will not be committed"
    )
    created_at: Timestamp
    next_attempt_at: Timestamp = Field(description="when a pending export is tried next")
    stored_at: Timestamp
    committed_at: Timestamp
    finished_at: Timestamp


EXPORT_TO = r"^[A-Za-z0-9._,\- ]*$"


class ExportDefaultsRequest(Fields):
    """The destinations the caller's jobs are sent to when a submission names none."""

    export_to: str = Field(
        max_length=1000,
        pattern=EXPORT_TO,
        description="`NAME[,NAME…]` of registered destinations; `none` clears them",
    )


class ExportDefaults(Strict):
    """The destinations the caller's jobs are sent to when a submission names none."""

    export_to: list[str] = Field(description="registered destinations' names, in order")


class ExportList(Strict):
    """A job's deliveries to PACS destinations, one per series result and destination."""

    exports: list[ExportInfo]


class Problem(BaseModel):
    """An error, as RFC 9457 `application/problem+json`; some carry more members
    (`filename`, `skipped`, `model`, `retry_after`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    status: int
    title: str
    detail: str


# Requests


FILES_DESCRIPTION = (
    "one part per PNG, JPEG or DICOM file, or ZIP archive of them; told "
    "apart by content, not by name"
)


class SubmissionOptions(Fields):
    """What a submission asks for besides its scans: the same fields in a form, in a JSON
    body and as the CLI's options (``cli/client.py`` sends them)."""

    name: Optional[str] = Field(
        None, max_length=MAX_NAME_LENGTH, pattern=NO_NUL, description="a name for the job"
    )
    model: Optional[str] = Field(
        None,
        pattern=MODEL_REF,
        description="`name` or `name:version` of a registered model (default: the default)",
    )
    precision: Optional[Precision] = Field(
        None,
        description="the numeric precision asked of "
        "the model (default: the "
        "worker's INFERENCE_PRECISION)",
    )
    priority: Priority = Field(
        "normal", description="waiting scans of higher priority jobs are classified first"
    )
    callback_url: Optional[str] = Field(
        None,
        pattern=NO_NUL,
        description="gets a signed event when the job ends (public addresses only)",
    )
    explain: Optional[ExplainMethod] = Field(None, description="`gradcam`: a heatmap of every scan")
    export_to: Optional[str] = Field(
        None,
        max_length=1000,
        pattern=EXPORT_TO,
        description="`NAME[,NAME…]`: registered destinations (`/v1/destinations`) each "
        "complete, classified DICOM series' result is sent to; absent: the owner's defaults "
        "(`/v1/export-defaults`); `none`: none",
    )

    def options(self) -> SubmissionOptions:
        """Only the options (a form or a body model also holds its files)."""
        return SubmissionOptions.model_construct(
            **{name: getattr(self, name) for name in SubmissionOptions.model_fields}
        )

    def form_fields(self) -> dict[str, str]:
        """The options that differ from the defaults, as a client sends them."""
        return {
            name: str(value)
            for name, value in self.options().model_dump().items()
            if value != SubmissionOptions.model_fields[name].default
        }


class SubmitJobForm(SubmissionOptions):
    """A bulk job, as `multipart/form-data`."""

    files: list[bytes] = Field(
        default_factory=list, description=FILES_DESCRIPTION + "; at least one unless `open`"
    )
    open: Flag = Field(
        False,
        description="keep the job open for more scans "
        "(`POST /v1/jobs/{job_id}/scans`) until it is sealed "
        "(`POST /v1/jobs/{job_id}/seal`): its scans are "
        "classified while the rest is sent",
    )
    allow_modality: Optional[str] = Field(
        None, description="DICOM modalities to classify besides CT, e.g. `MR,PT`"
    )


class AddScansForm(BaseModel):
    """One more part of an open job's scans, as `multipart/form-data`."""

    files: list[bytes] = Field(min_length=1, description=FILES_DESCRIPTION)
    allow_modality: Optional[str] = Field(
        None, description="DICOM modalities to classify besides CT, e.g. `MR,PT`"
    )


class UploadFile(BaseModel):
    filename: str = Field(pattern=NO_NUL)
    size: int = Field(ge=1, description="bytes; the upload URL is signed for it")


class DirectUploadRequest(SubmissionOptions):
    """A two-step upload (S3 store only): the slices to be PUT, and the job's options."""

    files: list[UploadFile] = Field(min_length=1)


class WebhookRequest(BaseModel):
    """An endpoint for every job of the caller's owner (JSON, or a form with these fields)."""

    url: str = Field(pattern=NO_NUL, description="http(s) URL of a public address")
    secret: Optional[str] = Field(
        None,
        pattern=NO_NUL,
        description="`whsec_…`, at least 24 bytes (default: the server's WEBHOOK_SECRET)",
    )


class SeriesQuery(Fields):
    slices: Flag = Field(False, description="`true` adds each series' slices in order")


class HeatmapQuery(Fields):
    format: Literal["png", "npy"] = Field("png", description="`npy`: the map as an array")
    view: Literal["overlay", "heatmap", "slice"] = Field(
        "overlay", description="the PNG's layer (the overlay has a legend)"
    )


class StowQuery(Fields):
    job: Optional[str] = Field(None, description="append to this job of yours (default: a new job)")


class JobListQuery(Fields):
    limit: int = Field(50, ge=1, le=500, description="how many jobs, newest first")


class ResultsQuery(Fields):
    format: Literal["json", "csv"] = Field(
        "json", description="`csv` streams every row with a header line"
    )
    limit: int = Field(100, ge=1, le=1000, description="rows per page (JSON only)")
    cursor: Optional[int] = Field(
        None, ge=-1, le=2**31 - 1, description="`next_cursor` of the previous page"
    )


class AuditQuery(Fields):
    limit: int = Field(100, ge=1, le=1000, description="events per page, newest first")
    cursor: Optional[int] = Field(
        None, ge=0, le=2**31 - 1, description="`next_cursor` of the previous page"
    )
    owner: Optional[str] = Field(None, description="only this owner's events")
    job_id: Optional[str] = Field(None, description="only this job's events")
    action: Optional[Action] = Field(None, description="only this action")


class ModelRefPath(BaseModel):
    ref: str = Field(
        pattern=MODEL_REF, description="`name` or `name:version` of a registered model"
    )


# PACS destinations (administrators)


class DestinationInfo(Strict):
    """A registered PACS destination; its credentials are never shown, only whether it has
    some. DICOM destinations carry the DICOM fields (``url`` null), DICOMweb ones the URL
    (the DICOM fields null)."""

    name: str
    kind: Literal["dicom", "dicomweb"]
    ae_title: Optional[str]
    host: Optional[str]
    port: Optional[int]
    tls: Optional[bool]
    commitment: Optional[bool]
    url: Optional[str]
    has_credentials: bool
    created_at: Timestamp


class DestinationList(Strict):
    """Every registered destination, by name."""

    destinations: list[DestinationInfo]


DESTINATION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# PS3.5 6.2: up to 16 characters of the default repertoire, no backslash; no edge spaces.
AE_TITLE = r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"
DICOMWEB_URL = r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[\x21-\x3f\x41-\x7e]*)?$"


class _NewDestination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DESTINATION_NAME, description="how jobs and the CLI name it")


class DicomDestinationRequest(_NewDestination):
    """A DICOM destination: C-STORE to an AE, with Storage Commitment when it offers it."""

    kind: Literal["dicom"]
    ae_title: str = Field(pattern=AE_TITLE, description="the PACS's AE title")
    host: str = Field(pattern=r"^[^\s/@\x00]{1,255}$", description="its host name or address")
    port: int = Field(ge=1, le=65535, description="its DICOM port")
    tls: bool = Field(False, description="associate over TLS")
    commitment: bool = Field(True, description="ask for Storage Commitment when offered")


class DicomWebDestinationRequest(_NewDestination):
    """A DICOMweb destination: STOW-RS to a base URL, with a bearer token or basic auth (not
    both), sealed with PHI_KEY and never returned."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["token", "basic"]}})

    kind: Literal["dicomweb"]
    url: str = Field(max_length=2000, pattern=DICOMWEB_URL, description="the base URL")
    token: Optional[str] = Field(None, pattern=NO_NUL, description="a bearer token")
    basic: Optional[str] = Field(
        None, pattern=r"^[^:\x00]+:[^\x00]*$", description="basic auth, `USER:PASSWORD`"
    )

    @model_validator(mode="after")
    def _one_credential(self) -> DicomWebDestinationRequest:
        if self.token and self.basic:
            raise ValueError("give a bearer token or basic auth, not both")
        return self


class DestinationRequest(
    RootModel[
        Annotated[
            DicomDestinationRequest | DicomWebDestinationRequest,
            Field(discriminator="kind"),
        ]
    ]
):
    """A destination to register, by its ``kind``: `dicom` or `dicomweb`."""


class DestinationNamePath(BaseModel):
    name: str = Field(pattern=DESTINATION_NAME, description="a registered destination's name")


class SeriesReportPath(BaseModel):
    series_uid: str = Field(
        pattern=r"^[0-9.]{1,64}$", description="the series' Series Instance UID (digits and dots)"
    )


# Retrievals: pulling a cohort from a registered PACS

MAX_RETRIEVAL_ITEMS = 1000
# DICOM SH (PS3.5 6.2): 16 characters; no wildcard (* ?), no backslash (a list of values):
# an accession number asks for one study, never a pattern of them.
ACCESSION_FORBIDDEN = frozenset("*?\\")
STUDY_UID = r"^[0-9]+(\.[0-9]+)*$"


def _accession(value: str) -> str:
    """Checked without ever repeating the value: an accession number is a patient's study's."""
    value = value.strip()
    if not value or len(value) > 16:
        raise ValueError("must be 1 to 16 characters (DICOM SH)")
    if any(c in ACCESSION_FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not hold wildcards (* ?), backslashes or control characters")
    return value


AccessionNumber = Annotated[
    str,
    AfterValidator(_accession),
    Field(
        json_schema_extra={
            "minLength": 1,
            "maxLength": 16,
            "pattern": "^[^*?\\\\\\x00-\\x1f\\x7f]+$",
        }
    ),
]
StudyUid = Annotated[str, Field(max_length=64, pattern=STUDY_UID)]


class RetrievalRequest(BaseModel):
    """Studies to retrieve from the registered destination ``source``, by accession numbers
    or by study UIDs (one of the two lists)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(pattern=DESTINATION_NAME, description="a registered destination's name")
    accession_numbers: Optional[list[AccessionNumber]] = Field(
        None,
        min_length=1,
        max_length=MAX_RETRIEVAL_ITEMS,
        description="accession numbers (kept only sealed with PHI_KEY; answers name each "
        "item by its index in this list)",
    )
    study_uids: Optional[list[StudyUid]] = Field(
        None, min_length=1, max_length=MAX_RETRIEVAL_ITEMS, description="Study Instance UIDs"
    )

    @model_validator(mode="after")
    def _one_list(self) -> RetrievalRequest:
        if bool(self.accession_numbers) == bool(self.study_uids):
            raise ValueError("must give accession_numbers or study_uids, one of the two")
        return self


class RetrievalItemInfo(Strict):
    """One identifier of a retrieval, by its ``index`` in the list sent (never the
    accession number itself): what the PACS held and what came of it."""

    index: int
    outcome: RetrievalOutcome
    study_uids: list[str]
    instances_expected: Optional[int] = Field(description="CT instances the PACS said it holds")
    instances_retrieved: Optional[int] = Field(description="instances kept in the job")
    job_id: Optional[str]
    reason: Optional[str] = Field(description="why it was refused or failed, or a warning")
    finished_at: Timestamp


class RetrievalLinks(Strict):
    self: str


class RetrievalInfo(Strict):
    """A retrieval and its items, in the order they were asked for."""

    id: str
    source: str
    by: Literal["accession_number", "study_uid"]
    status: RetrievalStatus
    window: Optional[str] = Field(description="RETRIEVE_WINDOW, when retrievals wait for it")
    created_at: Timestamp
    items: list[RetrievalItemInfo]
    links: RetrievalLinks


class RetrievalList(Strict):
    """The caller's most recent retrievals, newest first."""

    retrievals: list[RetrievalInfo]


class RetrievalListQuery(Fields):
    limit: int = Field(20, ge=1, le=200, description="how many retrievals, newest first")
