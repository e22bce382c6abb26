"""SQLAlchemy 2.x models: a Job owns the Scans uploaded with it; Models are registered.

Job status is never stored: it is derived from the scans' states (see
:mod:`db.jobs`). A scan carries its own result and the identity of the model,
engine, precision and preprocessing that produced it, and the worker that ran it. A job
is pinned at submission to a registered model (``model_id``); none means the untrained
default.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from covidscan.contract import DestinationKind, RetrievalOutcome, ScanStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: Optional[datetime]) -> Optional[str]:
    """``2026-12-07T19:56:42.123456Z`` (ISO 8601 in UTC), the one time format of every
    answer and event; None for None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class UTCDateTime(TypeDecorator[datetime]):
    """A moment in UTC: stored timezone-aware, always read back aware and in UTC.

    SQLite keeps no zone (it hands back naive datetimes, stored in UTC); PostgreSQL hands
    them back in the connection's zone. Either way a reader gets UTC. A naive datetime is
    refused: its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"a naive datetime ({value.isoformat()}) has no zone: "
                "pass an aware one (db.models.utcnow())"
            )
        return value.astimezone(UTC)

    def process_result_value(
        self, value: Optional[datetime], dialect: Dialect
    ) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: stored in UTC
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


PRIORITIES = ("high", "normal", "low")
"""A job's priority names; a scan stores the index (0 = high), so a claim orders by it."""


def priority_rank(name: str) -> int:
    """0 for ``high``, 1 for ``normal``, 2 for ``low``.

    Raises:
        ValueError: not one of :data:`PRIORITIES`.
    """
    if name not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {name!r}")
    return PRIORITIES.index(name)


class Leasable:
    """A row held under a lease (:mod:`db.queue`): until when, and how many attempts it had."""

    lease_expires_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class LeaseMixin(Leasable):
    """The columns of a row that workers lease from a queue in SQL (:mod:`db.queue`).

    A waiting row (``queued``) is taken by priority (0 = high), then in the order it was
    queued. A ``running`` row is leased: its owner renews the lease while it works; an
    expired lease puts it back, or fails it after the last allowed attempt.
    """

    status_enum_name: ClassVar[str]
    """The name of the status column's enum type (one per table)."""

    @declared_attr
    def status(cls) -> Mapped[ScanStatus]:
        return mapped_column(
            SqlEnum(
                ScanStatus,
                name=cls.status_enum_name,
                native_enum=False,
                length=16,
                values_callable=lambda e: [m.value for m in e],
            ),
            default=ScanStatus.QUEUED,
        )

    priority: Mapped[int] = mapped_column(Integer, default=1)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(200))


class Model(Base):
    """A registered classifier: a file in the model store and what it is."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(20))
    input_height: Mapped[int] = mapped_column(Integer)
    input_width: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(JSON)
    positive_class: Mapped[str] = mapped_column(String(100))
    preprocessing: Mapped[str] = mapped_column(String(50))
    trained: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    report: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    stored_path: Mapped[str] = mapped_column(String(1024))
    # Registered with --trust-code: its layers or ops may run code when it is loaded.
    trusted_code: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The window (width, level in Hounsfield units) DICOM slices are seen through before the
    # model's own preprocessing; None: the lung window (1500, -600).
    dicom_window_width: Mapped[Optional[float]] = mapped_column(Float)
    dicom_window_level: Mapped[Optional[float]] = mapped_column(Float)

    @property
    def ref(self) -> str:
        """``name:version``, as the CLI and the API accept it."""
        return f"{self.name}:{self.version}"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version!r}, default={self.is_default})"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    requested_model: Mapped[Optional[str]] = mapped_column(String(200))
    model_name: Mapped[Optional[str]] = mapped_column(String(200))
    model_version: Mapped[Optional[str]] = mapped_column(String(100))
    model_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    model_trained: Mapped[Optional[bool]] = mapped_column()
    model_id: Mapped[Optional[str]] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), index=True
    )
    # The owner of the key that submitted it; None for jobs from before ownership existed
    # (only admins see those).
    owner: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    precision: Mapped[Optional[str]] = mapped_column(String(20))
    cancelled_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    expires_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), index=True)
    # Where the "job finished" event goes besides the owner's endpoints (db.webhooks).
    callback_url: Mapped[Optional[str]] = mapped_column(String(2000))
    # "pending" until the job's end has been turned into its events, then "done" (once);
    # None for jobs from before webhooks existed.
    finish_event: Mapped[Optional[str]] = mapped_column(String(10), default="pending", index=True)
    # Explanations asked for at submission ("gradcam"), or None.
    explain: Mapped[Optional[str]] = mapped_column(String(20))
    # How a DICOM series' P(COVID) is made from its slices' (db.series), fixed at submission.
    series_rule: Mapped[Optional[str]] = mapped_column(String(50))
    # The intended-use rules in force at submission (core.intake.intended_use): which DICOM
    # instances are skipped, and the fewest slices a series needs for a result.
    intended_use: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    # Set while the job takes more scans (POST /v1/jobs/<id>/scans): until it is sealed, or
    # until this moment, after which the sweep seals it. None for a sealed job.
    open_until: Mapped[Optional[datetime]] = mapped_column(UTCDateTime(), index=True)
    # Names of the registered destinations (db.models.Destination) its series' results are
    # sent to once complete and classified; None or empty: none.
    export_to: Mapped[Optional[list[str]]] = mapped_column(JSON)
    # Series Instance UID -> the instances its sender holds (NumberOfSeriesRelatedInstances
    # from a C-FIND to the sender of a C-STORE job); None when no sender said.
    series_expected: Mapped[Optional[dict[str, int]]] = mapped_column(JSON)

    scans: Mapped[list[Scan]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Scan.position",
    )

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, name={self.name!r})"


class Scan(LeaseMixin, Base):
    """One uploaded slice: queued, leased by a worker, then its result (or why none)."""

    __tablename__ = "scans"
    status_enum_name = "scan_status"
    __table_args__ = (
        UniqueConstraint("job_id", "position", name="uq_scans_job_id_position"),
        Index("ix_scans_job_id_status", "job_id", "status"),
        Index("ix_scans_status_priority", "status", "priority", "queued_at"),
        Index("ix_scans_lease_owner", "lease_owner"),
        Index("ix_scans_job_id_series_uid", "job_id", "series_uid"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(1024))
    blob_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(Integer)
    probability_covid: Mapped[Optional[float]] = mapped_column(Float)
    label: Mapped[Optional[str]] = mapped_column(String(100))
    error: Mapped[Optional[str]] = mapped_column(Text)
    model_name: Mapped[Optional[str]] = mapped_column(String(200))
    model_version: Mapped[Optional[str]] = mapped_column(String(100))
    model_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    engine: Mapped[Optional[str]] = mapped_column(String(50))
    precision: Mapped[Optional[str]] = mapped_column(String(20))
    preprocessing: Mapped[Optional[str]] = mapped_column(String(50))
    worker: Mapped[Optional[str]] = mapped_column(String(200))
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    # How many times a result was written (audit: exactly 1 for a finished scan).
    result_writes: Mapped[int] = mapped_column(Integer, default=0)
    # DICOM slices only: where the slice sits (no patient identifiers are kept in SQL).
    # ``frame`` is the frame of a multi-frame file (its frames share one blob).
    frame: Mapped[Optional[int]] = mapped_column(Integer)
    study_uid: Mapped[Optional[str]] = mapped_column(String(64))
    series_uid: Mapped[Optional[str]] = mapped_column(String(64))
    sop_instance_uid: Mapped[Optional[str]] = mapped_column(String(64))
    sop_class_uid: Mapped[Optional[str]] = mapped_column(String(64))
    modality: Mapped[Optional[str]] = mapped_column(String(16))
    instance_number: Mapped[Optional[int]] = mapped_column(Integer)
    slice_position: Mapped[Optional[float]] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="scans")

    def __repr__(self) -> str:
        return f"Scan(id={self.id!r}, filename={self.filename!r}, status={self.status.value!r})"


class Explanation(LeaseMixin, Base):
    """Where the model looked for one scan (Grad-CAM), and the pictures of it.

    Queued like a scan: a worker leases it once its scan has a result, computes it with
    the job's model in fp32 and writes it under its lease. The pictures are kept here,
    not in the blob store (workers cannot write there), and are loaded only when asked for.
    """

    __tablename__ = "explanations"
    status_enum_name = "explanation_status"
    __table_args__ = (
        UniqueConstraint("scan_id", "method", name="uq_explanations_scan_id_method"),
        Index("ix_explanations_status_priority", "status", "priority", "queued_at"),
        Index("ix_explanations_lease_owner", "lease_owner"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    scan_id: Mapped[str] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(20))
    error: Mapped[Optional[str]] = mapped_column(Text)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    # What was explained, and by what: layer, class, score (logit or probability), model.
    layer: Mapped[Optional[str]] = mapped_column(String(200))
    class_name: Mapped[Optional[str]] = mapped_column(String(100))
    class_index: Mapped[Optional[int]] = mapped_column(Integer)
    score: Mapped[Optional[str]] = mapped_column(String(20))
    probability_covid: Mapped[Optional[float]] = mapped_column(Float)
    model_name: Mapped[Optional[str]] = mapped_column(String(200))
    model_version: Mapped[Optional[str]] = mapped_column(String(100))
    model_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    model_trained: Mapped[Optional[bool]] = mapped_column(Boolean)
    engine: Mapped[Optional[str]] = mapped_column(String(50))
    precision: Mapped[Optional[str]] = mapped_column(String(20))
    preprocessing: Mapped[Optional[str]] = mapped_column(String(50))
    height: Mapped[Optional[int]] = mapped_column(Integer)
    width: Mapped[Optional[int]] = mapped_column(Integer)
    overlay_png: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)
    heatmap_png: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)
    slice_png: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)
    map_npy: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)

    def __repr__(self) -> str:
        return (
            f"Explanation(scan_id={self.scan_id!r}, method={self.method!r}, "
            f"status={self.status.value!r})"
        )


class ApiKey(Base):
    """An API key: ``csk_<id>_<secret>``; only the SHA-256 of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    scopes: Mapped[str] = mapped_column(String(100))  # comma-separated, e.g. "read,submit"
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, owner={self.owner!r}, scopes={self.scopes!r})"


class WebSession(Base):
    """A browser's signed-in session: the SHA-256 of its cookie, the key that opened it
    and the token its page must send with every state-changing request."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    key: Mapped[ApiKey] = relationship()

    def __repr__(self) -> str:
        return f"WebSession(key_id={self.key_id!r}, expires_at={self.expires_at!r})"


class AuditEvent(Base):
    """Who (key, owner) did what to which job, and when. Never a slice's content or name."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    key_id: Mapped[Optional[str]] = mapped_column(String(32))
    owner: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(50))
    job_id: Mapped[Optional[str]] = mapped_column(String(32), index=True)  # no FK: outlives jobs
    detail: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)

    def __repr__(self) -> str:
        return f"AuditEvent(id={self.id!r}, action={self.action!r}, owner={self.owner!r})"


class Wakeup(Base):
    """The outbox: wake-ups to send to Redis, written in the transaction that made the work.

    A relay sends them after the commit and deletes them; a crash or a Redis error in
    between leaves them here for the next sweep to send.
    """

    __tablename__ = "wakeups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    tasks: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(100))

    def __repr__(self) -> str:
        return f"Wakeup(id={self.id!r}, tasks={self.tasks}, reason={self.reason!r})"


class WorkerStatus(Base):
    """A live worker: ready once its default model is warm, with a heartbeat.

    ``engines`` lists, per loaded model, which engine and precision serve each requested
    precision, their accuracy gates and measured images/s. A row whose heartbeat is older
    than a few intervals belongs to a worker that died; readers ignore it.
    """

    __tablename__ = "worker_status"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ready: Mapped[bool] = mapped_column(Boolean, default=False)
    engines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)

    def __repr__(self) -> str:
        return f"WorkerStatus(name={self.name!r}, ready={self.ready})"


class WebhookEndpoint(Base):
    """A URL an owner registered: it gets the events of every job of that owner.

    ``secret`` (``whsec_…``) signs what is sent to it; None: the server's WEBHOOK_SECRET.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (UniqueConstraint("owner", "url", name="uq_webhook_endpoints_owner_url"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"WebhookEndpoint(id={self.id!r}, owner={self.owner!r})"


class WebhookEvent(Leasable, Base):
    """One job's end, to one destination: the message and where its delivery stands.

    ``id`` is the ``webhook-id`` every attempt carries (receivers de-duplicate on it).
    ``state``: pending, delivered, gone (the receiver answered 410) or failed (retries
    ran out). An attempt holds a pending event under a lease (:mod:`db.queue`); the state
    stays pending meanwhile, and an expired lease frees the event by itself.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("job_id", "url", name="uq_webhook_events_job_id_url"),
        Index("ix_webhook_events_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    owner: Mapped[Optional[str]] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    type: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    # When a delivery task was last sent to the broker for it (None: no queue holds it).
    queued_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"WebhookEvent(id={self.id!r}, job_id={self.job_id!r}, state={self.state!r})"


class WebhookDelivery(Base):
    """One attempt to deliver a :class:`WebhookEvent`, whatever came of it."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[Optional[int]] = mapped_column(Integer)
    error: Mapped[Optional[str]] = mapped_column(String(500))
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered, retry, gone or failed
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return (
            f"WebhookDelivery(event_id={self.event_id!r}, attempt={self.attempt}, "
            f"outcome={self.outcome!r})"
        )


class Destination(Base):
    """A PACS an administrator registered to receive results.

    A ``dicom`` destination is ``ae_title@host:port`` (``tls``, ``commitment``: asks for
    Storage Commitment); a ``dicomweb`` one is a base ``url``. ``credentials`` (a bearer
    token or basic auth) are sealed with PHI_KEY (:mod:`core.sealing`), never stored plain.
    """

    __tablename__ = "destinations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[DestinationKind] = mapped_column(
        SqlEnum(
            DestinationKind,
            name="destination_kind",
            native_enum=False,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        )
    )
    ae_title: Mapped[Optional[str]] = mapped_column(String(16))
    host: Mapped[Optional[str]] = mapped_column(String(255))
    port: Mapped[Optional[int]] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    commitment: Mapped[bool] = mapped_column(Boolean, default=False)
    url: Mapped[Optional[str]] = mapped_column(String(2000))
    credentials: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def __repr__(self) -> str:
        return f"Destination(name={self.name!r}, kind={self.kind.value!r})"


class Export(Leasable, Base):
    """One result instance (a series' SR, or its overlay) to send to one destination.

    Made when the series is complete and classified; ``sop_instance_uid`` (and the results
    series' ``results_series_uid``) are fixed then, so every attempt sends the same
    instance and a PACS that kept an earlier one sees a duplicate, not a second result.
    ``state``: :class:`covidscan.contract.ExportState`. An attempt holds a pending export
    under a lease (:mod:`db.queue`); ``next_attempt_at`` is when it is due again.
    ``transaction_uid`` names the Storage Commitment request that waits for its report.
    """

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint(
            "job_id", "series_uid", "destination", "kind", name="uq_exports_series_destination"
        ),
        Index("ix_exports_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[Optional[str]] = mapped_column(String(200))
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="sr")
    study_uid: Mapped[Optional[str]] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    results_series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[Optional[str]] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    stored_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    committed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    transaction_uid: Mapped[Optional[str]] = mapped_column(String(64), index=True)

    def __repr__(self) -> str:
        return (
            f"Export(id={self.id!r}, job_id={self.job_id!r}, destination={self.destination!r}, "
            f"kind={self.kind!r}, state={self.state!r})"
        )


class ExportDefault(Base):
    """The destinations an owner's jobs are sent to when a submission names none
    (``PUT /v1/export-defaults``); a submission's own ``export_to`` wins, an empty one
    included."""

    __tablename__ = "export_defaults"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    export_to: Mapped[list[str]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"ExportDefault(owner={self.owner!r}, export_to={self.export_to!r})"


class Retrieval(Base):
    """A cohort an owner asked to pull from a registered PACS (``source``), by accession
    numbers or by study UIDs: one :class:`RetrievalItem` per identifier, in the order given.

    Accession numbers identify patients' studies: they are kept only sealed with PHI_KEY
    (``sealed_accessions``, a JSON list), never in plain text. Study UIDs are kept as sent.
    """

    __tablename__ = "retrievals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    key_id: Mapped[Optional[str]] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(64))
    by: Mapped[str] = mapped_column(String(20))  # "accession_number" or "study_uid"
    sealed_accessions: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)
    study_uids: Mapped[Optional[list[str]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)

    items: Mapped[list[RetrievalItem]] = relationship(
        back_populates="retrieval",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="RetrievalItem.position",
    )

    def __repr__(self) -> str:
        return f"Retrieval(id={self.id!r}, owner={self.owner!r}, source={self.source!r})"


class RetrievalItem(LeaseMixin, Base):
    """One identifier of a retrieval, leased by the DICOM gateway that retrieves it: what
    it found (study UIDs, instances) and what came of it (``outcome``, the job it made)."""

    __tablename__ = "retrieval_items"
    status_enum_name = "retrieval_item_status"
    __table_args__ = (
        UniqueConstraint(
            "retrieval_id", "position", name="uq_retrieval_items_retrieval_id_position"
        ),
        Index("ix_retrieval_items_status_priority", "status", "priority", "queued_at"),
        Index("ix_retrieval_items_lease_owner", "lease_owner"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    retrieval_id: Mapped[str] = mapped_column(ForeignKey("retrievals.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # its index in the request's list
    outcome: Mapped[RetrievalOutcome] = mapped_column(
        SqlEnum(
            RetrievalOutcome,
            name="retrieval_outcome",
            native_enum=False,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=RetrievalOutcome.QUEUED,
    )
    study_uids: Mapped[Optional[list[str]]] = mapped_column(JSON)
    instances_expected: Mapped[Optional[int]] = mapped_column(Integer)
    instances_retrieved: Mapped[Optional[int]] = mapped_column(Integer)
    # The job the retrieved instances went to (None until then, or when none was made).
    job_id: Mapped[Optional[str]] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    # Why it was refused or failed, in the PACS's words (its status) or covidscan's; while
    # it waits to be tried again, why the last attempt did not reach the PACS.
    error: Mapped[Optional[str]] = mapped_column(Text)
    # Not claimed before this moment (a PACS that could not be reached is tried again later).
    not_before: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    retrieval: Mapped[Retrieval] = relationship(back_populates="items")

    def __repr__(self) -> str:
        return (
            f"RetrievalItem(retrieval_id={self.retrieval_id!r}, position={self.position}, "
            f"outcome={self.outcome.value!r})"
        )
