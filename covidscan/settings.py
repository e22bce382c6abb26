"""Configuration from environment variables, read and validated in one place.

Each process (API, worker, local stack, CLI) calls :func:`load_settings` once at start-up.
A setting is one field of :class:`Settings`, written once: its variable (the field name in
upper case), its default and what it means; the configuration table of the docs
(docs/run/configuration.md, at every ``make docs``) is made from them (:func:`config_table`).
A wrong value raises :class:`ConfigError` naming the variable, and the entry points turn that
into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional, TypeVar

from pydantic import (
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from covidscan.config_types import (
    PRECISIONS,
    AeTitles,
    AnyPath,
    AuthMode,
    Bytes,
    CookieSecure,
    Count,
    CountOrZero,
    DatabaseUrl,
    DelayMs,
    Engine,
    ExistingFolder,
    ExistingPath,
    Flag,
    Folder,
    Hosts,
    HttpUrl,
    LogLevel,
    MetricsAccess,
    Millimetres,
    NamedHosts,
    OptionalText,
    PhiKey,
    Pixels,
    Port,
    PortOrOff,
    PositiveSeconds,
    Precision,
    RateLimit,
    RedisUrl,
    Seconds,
    SeriesRule,
    Text,
    Timeout,
    WebhookSecret,
    Window,
)
from covidscan.config_types import (
    webhook_secret as _webhook_secret,
)
from covidscan.s3_location import S3Location
from covidscan.series_rule import DEFAULT_RULE

__all__ = [
    "ConfigError",
    "Settings",
    "ClientSettings",
    "load_settings",
    "client_api_key",
    "variable_names",
    "config_table",
    "webhook_secret",
    "normalise_database_url",
    "PRECISIONS",
    "LOOPBACK_HOSTS",
]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
T = TypeVar("T", bound=BaseSettings)


class ConfigError(ValueError):
    """A configuration variable is missing or has an invalid value."""


def setting(
    default: Any = None,
    doc: str = "",
    *,
    derived: Optional[Callable[..., Any]] = None,
    shown: Optional[str] = None,
    alias: Optional[str] = None,
    secret: bool = False,
) -> Any:
    """A field: ``default`` (as an operator would write it, parsed like a value) or one
    ``derived`` from the fields above it; ``doc`` is its row in the configuration table,
    ``shown`` its default there when the value alone would not say it (``{}`` is the value)."""
    extra: Optional[dict[str, JsonValue]] = {"shown": shown} if shown else None
    if derived is not None:
        return Field(
            default_factory=derived,
            alias=alias,
            description=doc,
            repr=not secret,
            json_schema_extra=extra,
        )
    return Field(default, alias=alias, description=doc, repr=not secret, json_schema_extra=extra)


def _under_var(name: str) -> Callable[[dict[str, Any]], Path]:
    return lambda fields: fields["var_dir"] / name


class _Base(BaseSettings):
    """What every covidscan process and the CLI share: where local state lives."""

    model_config = SettingsConfigDict(
        frozen=True,
        alias_generator=str.upper,
        extra="forbid",
        validate_by_name=True,
        validate_default=True,
    )

    var_dir: AnyPath = setting(
        "var",
        "where `make run` keeps the SQLite file, blobs, Redis data and the keys it makes; "
        "the variables below default to paths in it.",
        alias="COVIDSCAN_VAR_DIR",
    )
    api_key_file: AnyPath = setting(
        derived=_under_var("api-key"),
        doc="where `make run` saves its first administrator's key "
        "(mode 0600) and the CLI looks for one.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Values come from :func:`load_settings` only: building one never reads the
        environment (nor a .env file) on its own."""
        return (init_settings,)


class Settings(_Base):
    """Everything a covidscan process can be configured with."""

    database_url: DatabaseUrl = setting(
        derived=lambda f: f"sqlite:///{(f['var_dir'] / 'covidscan.db').as_posix()}",
        doc="`sqlite:///path` or `postgresql://user@host:port/db` (psycopg 3).",
    )
    redis_url: RedisUrl = setting(
        "redis://127.0.0.1:6379/0",
        "the Celery broker; when it is unset, `make run` starts an embedded Redis.",
    )
    blob_dir: AnyPath = setting(
        derived=_under_var("blobs"),
        doc="where uploaded bytes and thumbnails are kept when "
        "`BLOB_STORE` is unset; then shared by the API, the workers and `covidscan sweep`.",
    )
    s3_endpoint_url: HttpUrl = setting(
        None,
        "the S3 API's URL for SeaweedFS, MinIO, Ceph or another provider, e.g. "
        "`http://seaweedfs:8333`.",
        shown="none (AWS S3)",
    )
    s3_public_endpoint_url: HttpUrl = setting(
        derived=lambda f: f.get("s3_endpoint_url"),
        shown="`S3_ENDPOINT_URL`",
        doc="the endpoint presigned upload URLs name, when clients reach the store under "
        "another address than the API does.",
    )
    aws_access_key_id: OptionalText = setting(
        None,
        "with `AWS_SECRET_ACCESS_KEY` (both or neither): the S3 credentials; with "
        "neither, boto3's own chain (instance profile, pod identity, `~/.aws`).",
        secret=True,
    )
    aws_secret_access_key: OptionalText = setting(
        None, "see `AWS_ACCESS_KEY_ID`; never logged.", secret=True
    )
    aws_session_token: OptionalText = setting(None, "for temporary credentials.", secret=True)
    aws_default_region: Text = setting("us-east-1", "read when `AWS_REGION` is unset.")
    aws_region: Text = setting(
        derived=lambda f: f.get("aws_default_region"),
        shown="`AWS_DEFAULT_REGION`",
        doc="the bucket's region.",
    )
    blob_store: Optional[S3Location] = setting(
        None,
        "`s3://BUCKET/PREFIX`: keep every blob as an object in an S3-compatible bucket "
        'instead (see "Object storage"); workers then need no shared folder.',
        shown="none (the folder `BLOB_DIR`)",
    )
    upload_url_seconds: Count = setting(
        3600, "how long presigned upload URLs of the two-step upload stay valid (S3 store only)."
    )
    model_path: ExistingPath = setting(
        None,
        "a `.h5`, `.keras` or SavedModel directory registered (or found by SHA-256) by "
        "`make run` and `covidscan migrate` before the API starts, and by each worker at "
        "start-up; the default only if none exists.",
    )
    model_store_dir: Folder = setting(
        derived=_under_var("models"),
        doc="where registered model files are kept; shared by the "
        "CLI and the workers, or, with `BLOB_STORE`, each host's cache of the models in the "
        "bucket.",
    )
    max_loaded_models: Count = setting(
        2, "models a worker keeps warm at once (least recently used evicted)."
    )
    batch_size: Count = setting(
        32,
        "scans a worker leases at a time; the API sends one wake-up per `BATCH_SIZE` scans "
        "of a job, so a job spreads over the free workers.",
    )
    max_batch_size: Count = setting(
        32, "most scans per model call; the worker merges scans of many tasks and jobs up to this."
    )
    max_queue_delay_ms: DelayMs = setting(
        200,
        "longest a scan waits for its batch to fill (0–60000); a batch runs when full or "
        "when its oldest scan has waited this long.",
    )
    worker_concurrency: Count = setting(
        derived=lambda f: 2 * f.get("max_batch_size", 1),
        shown="2 × `MAX_BATCH_SIZE`",
        doc="task threads per worker process. Whatever it is, a worker holds at most "
        "max(2, 2 × `MAX_BATCH_SIZE` / `BATCH_SIZE`) leases of `BATCH_SIZE` scans at once.",
    )
    inference_engine: Engine = setting(
        "auto", "`auto` (TensorFlow on a GPU, OpenVINO on a CPU), `tensorflow` or `openvino`."
    )
    inference_precision: Precision = setting(
        "fp32",
        "`fp32`, `bf16`, `fp16`, `int8` or `auto` (the fastest engine that passed its "
        "gate): the default for jobs that do not ask for one.",
    )
    engine_cache_dir: AnyPath = setting(
        derived=_under_var("engine-cache"),
        doc="converted OpenVINO models (by the model's SHA-256) and compiled blobs.",
    )
    max_upload_bytes: Bytes = setting(
        "512MB", "largest request (`413` above it); accepts `MB`, `GB`, `KiB`…"
    )
    max_scan_bytes: Bytes = setting("64MB", "largest single slice, also inside ZIPs.")
    max_scans_per_job: Count = setting(10_000, "most slices in one job.")
    max_scan_pixels: Pixels = setting(
        "4096x4096",
        "most pixels a slice may declare (`16777216` or `4096x4096`); checked from "
        "the header at upload, and OpenCV's decoding cap in the workers.",
    )
    max_expanded_bytes: Bytes = setting(
        derived=lambda f: f.get("max_upload_bytes"),
        shown="`MAX_UPLOAD_BYTES`",
        doc="most bytes a request may expand to, every ZIP entry (skipped ones too) counted.",
    )
    max_archive_entries: Count = setting(
        10_000, "most entries in one ZIP, directories and skipped entries included."
    )
    max_compression_ratio: Count = setting(
        200, "most a ZIP entry may expand relative to its compressed size."
    )
    trusted_hosts: Hosts = setting(
        "localhost,127.0.0.1",
        "host names the API answers to (the `Host` header); others get "
        "400. `*` alone turns the check off.",
    )
    model_trust_code: Flag = setting(
        False,
        "`true` lets `MODEL_PATH` be registered even when its layers or ops run code "
        'when loaded (see "Model files that run code").',
    )
    visibility_timeout: Count = setting(
        3600,
        "seconds before Redis hands an unacknowledged wake-up to another worker. Recovery "
        "from a dead worker does not wait for it (see `LEASE_SECONDS`).",
    )
    worker_prefetch: Count = setting(
        2,
        "wake-ups a worker reserves ahead, per task thread; scans are leased only when about "
        "to be decoded.",
    )
    lease_seconds: Count = setting(
        15,
        "a worker's lease on the scans it works on, renewed every third of it. A dead "
        "worker's scans are back in the queue at most `LEASE_SECONDS` + `SWEEP_INTERVAL` after "
        "its death.",
    )
    sweep_interval: Count = setting(
        derived=lambda f: min(5, f.get("lease_seconds", 5)),
        shown="{} (at most `LEASE_SECONDS`)",
        doc="seconds between two sweeps (in every worker and in `covidscan sweep`).",
    )
    max_attempts: Count = setting(
        3,
        "attempts a scan gets; a scan whose attempts all ended with their worker's death "
        'fails with "worker died while processing this scan (3 attempts)".',
    )
    dicom_allowed_ae_titles: AeTitles = setting(
        (),
        "calling AE titles `covidscan dicom-listen` accepts associations from "
        "(comma-separated); others are rejected at association. Empty: any.",
        shown="empty (any)",
    )
    dicom_max_associations: Count = setting(
        10,
        "associations `covidscan dicom-listen` serves at once; one more is rejected "
        "(transient, local limit exceeded) until one ends.",
    )
    dicom_timeout: Count = setting(
        30,
        "seconds `covidscan dicom-listen` waits for an association to be negotiated, for a "
        "DIMSE message and for the network, before it aborts the association; also bounds "
        "its C-FIND to the sender.",
    )
    series_stable_seconds: Count = setting(
        60,
        "a series received over C-STORE from a sender that cannot say its size (no C-FIND) "
        "is complete once this many seconds pass without a new instance; its job is then "
        "sealed by the sweep.",
    )
    retrieve_window: Window = setting(
        None,
        "the hours in which `covidscan dicom-listen` retrieves studies asked for with "
        "`POST /v1/retrievals` (`covidscan pull`), e.g. `22:00-06:00` (the gateway's local "
        "time; over midnight when the end is earlier). Outside it retrievals wait, in state "
        "`waiting_window`. Empty: any time.",
        shown="empty (any time)",
    )
    retrieve_retry_base: PositiveSeconds = setting(
        "5m",
        "the first wait before a retrieval item whose PACS could not be reached is tried "
        "again; each next wait doubles (jittered), and after `MAX_ATTEMPTS` attempts the "
        "item fails with the reason.",
    )
    retrieve_poll_interval: Timeout = setting(
        1,
        "seconds between two looks of `covidscan dicom-listen` for retrievals to run (1–120).",
    )
    series_rule: SeriesRule = setting(
        DEFAULT_RULE,
        "how a DICOM series' P(COVID) is made from its slices': `topNpct-mean` "
        "(mean of the highest N %, at least one slice; N from 1 to 100), `mean` or `max`. "
        "Recorded with each job at submission.",
    )
    max_slice_thickness_mm: Millimetres = setting(
        5.0,
        "DICOM slices thicker than this (SliceThickness, in mm) are skipped with the reason, "
        "as are localizers and slices that are not axial: the model is made for thin axial "
        "CT slices. Recorded with each job at submission.",
    )
    min_series_slices: Count = setting(
        1,
        "a DICOM series of fewer slices gets no series result (P(COVID), label, SR), with "
        "the reason; its slices are still classified. `1`: every series gets one. Recorded "
        "with each job at submission.",
    )
    open_job_timeout: PositiveSeconds = setting(
        "1h",
        "how long an open job waits for its next part before the sweep seals it (deletes "
        "it, when it holds no scan): `90s`, `15m`, `1h`, or seconds.",
    )
    job_retention: Seconds = setting(
        "30d",
        "how long a job, its results and its slices are kept after submission: `30d`, "
        "`12h`, `90m`, `3600` (seconds); `0` keeps them for ever. Sets each job's "
        "`expires_at`; the sweep deletes expired jobs, and retrievals (`POST /v1/retrievals`) "
        "as old whose items have ended.",
    )
    port: Port = setting(5000, "the API's port under `make run` (waitress, loopback only).")
    dicom_port: PortOrOff = setting(
        11112,
        "the port of `make run`'s DICOM listener (`covidscan dicom-listen`: loopback only, "
        "AE title `COVIDSCAN`, jobs owned by the administrator `admin`); `0`: none.",
    )
    log_level: LogLevel = setting("INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    auth: AuthMode = setting(
        "on", "`off` disables keys; refused unless `API_HOST` is loopback (see *Security model*)."
    )
    api_host: Text = setting(
        "127.0.0.1", "the address `make run` binds the API to; compose sets `0.0.0.0`."
    )
    session_hours: Count = setting(12, "how long a web page's sign-in lasts.")
    session_cookie_secure: CookieSecure = setting(
        "auto", "`auto` (Secure when the request came over TLS), `true` or `false`."
    )
    rate_limit: RateLimit = setting(
        "3000/minute", "requests per owner (`N/second`, `minute`, `hour` or `day`)."
    )
    scans_per_hour: Count = setting(
        100_000, "scans each owner may submit per hour; an explanation counts as a scan."
    )
    max_active_jobs: Count = setting(500, "unfinished jobs each owner may have at once.")
    failed_auth_limit: RateLimit = setting(
        "60/minute",
        "wrong API keys (bearer or sign-in form) per client address before it is "
        "refused with 429; loopback is not counted.",
    )
    proxy_hops: CountOrZero = setting(
        0,
        "trusted proxies in front of the API that set `X-Forwarded-For`/`-Proto` (compose: "
        "1, nginx); per-address limits and `Secure` cookies then see the client.",
    )
    webhook_secret: WebhookSecret = setting(
        None,
        "`whsec_` and the base64 of at least 24 random bytes: signs the events sent to a "
        "job's `callback_url` and to endpoints registered without a secret of their own (see "
        "*Webhooks*). Without it, only endpoints with their own secret can be used; `make run` "
        "makes one in `<COVIDSCAN_VAR_DIR>/webhook-secret` (mode 0600).",
        secret=True,
    )
    phi_key: PhiKey = setting(
        None,
        "the base64 of 32 random bytes (`openssl rand -base64 32`): the key that seals "
        "what is kept out of SQL in plain text: PACS destinations' credentials, and the patient "
        "and study attributes a PACS needs to file a result (kept beside each job's slices). "
        "Without it, destinations can only be registered without credentials and no patient "
        "attributes are kept; `make run` makes "
        "one in `<COVIDSCAN_VAR_DIR>/phi-key` (mode 0600). Keep it: what it sealed cannot be "
        "opened with another.",
        secret=True,
    )
    webhook_allowed_hosts: NamedHosts = setting(
        (),
        "host names or addresses (comma-separated, no wildcards) webhooks may reach even "
        "though they resolve to loopback, private or link-local addresses.",
    )
    webhook_timeout: Timeout = setting(
        10, "seconds to connect, and to wait for each read, when delivering a webhook (1–120)."
    )
    webhook_retry_base_ms: Count = setting(
        30_000,
        "the first wait after a failed delivery; each next wait doubles (jittered, at most 6 h).",
    )
    webhook_retry_window: PositiveSeconds = setting(
        "24h",
        "how long a delivery is retried after the job ended (`24h`, `2d`, `3600`); the "
        "last try is at its end.",
    )
    export_retry_window: PositiveSeconds = setting(
        "24h",
        "how long a result's delivery to a PACS destination (an export) is retried after its "
        "series' job ended (`24h`, `2d`, `3600`); then it fails with the destination's last "
        "reason. A refusal the PACS means for good (e.g. 0x0122, HTTP 409) fails at once.",
    )
    export_retry_base_ms: Count = setting(
        5_000,
        "the first wait after an export attempt the destination asked to repeat (0xA7xx, "
        "an abort, a timeout, HTTP 429/5xx); each next wait doubles (jittered, at most 6 h).",
    )
    export_timeout: Timeout = setting(
        30,
        "seconds each step of an export may take: the connection, the association, a "
        "C-STORE or N-ACTION answer, an HTTP read (1–120).",
    )
    export_commitment_timeout: PositiveSeconds = setting(
        "1h",
        "how long a stored export waits for the destination's Storage Commitment report; "
        "one that never comes stays `stored` with an error saying so.",
    )
    export_poll_seconds: PositiveSeconds = setting(
        1,
        "seconds between two looks for due exports by `covidscan dicom-listen`, the "
        "process that sends results to PACS destinations.",
    )
    metrics_access: MetricsAccess = setting(
        "key",
        "who may read the API's `/metrics`: `key` (a key with the `metrics` or `admin` "
        "scope) or `public` (compose sets it: Prometheus scrapes the API on the internal "
        "network and nginx refuses `/metrics` from outside). See *Metrics*.",
    )
    metrics_port: PortOrOff = setting(
        0,
        "the port a worker (and `covidscan sweep`, and `covidscan dicom-listen`) serves its own "
        "Prometheus metrics on; "
        "`make run` picks free ports and prints them, compose uses 9100 inside each "
        "container.",
        shown="{} (off)",
    )
    metrics_host: Text = setting(
        "127.0.0.1",
        "the address that port is bound to; compose sets `0.0.0.0` (the "
        "container's network only, never published).",
    )
    prometheus_multiproc_dir: ExistingFolder = setting(
        None,
        "an existing, empty directory: the API's processes (gunicorn) keep their metrics "
        "there and `/metrics` adds them up. Compose sets a tmpfs; `make run` (waitress, one "
        "process) needs none.",
    )

    @field_validator("blob_store", mode="before")
    @classmethod
    def _s3_location(cls, raw: Any, info: ValidationInfo) -> Any:
        """``BLOB_STORE=s3://BUCKET/PREFIX`` with the S3 and AWS variables above it."""
        if not isinstance(raw, str):
            return raw
        reach = info.data
        try:
            location = S3Location.from_url(
                raw.strip(),
                endpoint_url=reach.get("s3_endpoint_url"),
                public_endpoint_url=reach.get("s3_public_endpoint_url"),
                region=reach.get("aws_region"),
                access_key_id=reach.get("aws_access_key_id"),
                secret_access_key=reach.get("aws_secret_access_key"),
                session_token=reach.get("aws_session_token"),
            )
        except ValueError as exc:
            raise ValueError(f"{exc}; leave it unset to keep blobs in BLOB_DIR") from None
        if bool(location.access_key_id) != bool(location.secret_access_key):
            missing = "AWS_SECRET_ACCESS_KEY" if location.access_key_id else "AWS_ACCESS_KEY_ID"
            raise ConfigError(
                f"{missing} is missing: set both AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or neither (to use the instance's role)"
            )
        return location

    @model_validator(mode="after")
    def _loopback_without_auth(self) -> Settings:
        if self.auth == "off" and self.api_host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"AUTH=off is allowed only when API_HOST is a loopback address "
                f"({', '.join(LOOPBACK_HOSTS)}), got API_HOST={self.api_host!r}"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    @property
    def recovery_seconds(self) -> int:
        """How long after a worker's death its scans are back in the queue, at most."""
        return self.lease_seconds + self.sweep_interval

    def with_overrides(self, **changes: object) -> Settings:
        """Return a copy with some fields replaced (used by tests, benches and the local
        stack; the values are taken as given)."""
        return self.model_copy(update=changes)

    def was_set(self, name: str) -> bool:
        """Whether the field ``name`` came from a variable rather than its default."""
        return name in self.model_fields_set


class ClientSettings(_Base):
    """What the ``covidscan`` command's HTTP client reads besides its options."""

    covidscan_url: Text = setting(
        "http://127.0.0.1:5000", "the server the CLI talks to (`--url` overrides it)."
    )
    covidscan_api_key: OptionalText = setting(
        None, "the key the CLI sends; else the file in `API_KEY_FILE`.", secret=True
    )

    def api_key(self) -> Optional[str]:
        """``COVIDSCAN_API_KEY``, else the key in ``API_KEY_FILE``; None if neither."""
        if self.covidscan_api_key:
            return self.covidscan_api_key
        try:
            return self.api_key_file.read_text().strip() or None
        except OSError:
            return None


def _load(model: type[T], env: Optional[Mapping[str, str]]) -> T:
    """``model`` from the variables ``env`` sets to something other than blanks."""
    env = os.environ if env is None else env
    given: dict[str, Any] = {}
    for field in model.model_fields.values():
        raw = env.get(str(field.alias))
        if raw is not None and raw.strip():
            given[str(field.alias)] = raw.strip()
    try:
        return model(**given)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _config_error(exc: ValidationError) -> ConfigError:
    """One message naming each variable that is wrong."""
    messages = []
    for problem in exc.errors(include_url=False):
        if problem["type"] == "default_factory_not_called":  # follows a field named already
            continue
        cause = (problem.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # names its variables itself
            messages.append(str(cause))
            continue
        name = ".".join(str(part) for part in problem["loc"]) or "a setting"
        messages.append(f"{name} {cause if isinstance(cause, ValueError) else problem['msg']}")
    return ConfigError("; ".join(messages))


def load_settings(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Read settings from ``env`` (default: ``os.environ``); unset or blank variables take
    their defaults.

    Raises:
        ConfigError: a variable has an invalid value; the message names it.
    """
    return _load(Settings, env)


def load_client_settings(env: Optional[Mapping[str, str]] = None) -> ClientSettings:
    """The CLI client's settings from ``env`` (default: ``os.environ``). Raises ConfigError."""
    return _load(ClientSettings, env)


def client_api_key(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The key the CLI sends: ``COVIDSCAN_API_KEY``, else the file ``make run`` saved
    (``API_KEY_FILE``, default ``<COVIDSCAN_VAR_DIR>/api-key``); None if neither."""
    return load_client_settings(env).api_key()


def webhook_secret(name: str, raw: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of at least 24 random bytes.

    Raises:
        ConfigError: another prefix, not base64, or too short (the message names ``name``).
    """
    try:
        return _webhook_secret(raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from None


def normalise_database_url(name: str, raw: str) -> str:
    """Validate a database URL and pick the psycopg 3 driver for plain ``postgresql://``."""
    from covidscan.config_types import database_url

    try:
        return database_url(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from None


def variable_names() -> frozenset[str]:
    """The name of every environment variable :func:`load_settings` reads (deployment files
    and their tests check against it)."""
    return frozenset(str(field.alias) for field in Settings.model_fields.values())


def config_table() -> str:
    """The configuration table (Markdown) the docs show: each variable, its default, its meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for model in (Settings, ClientSettings):
        defaults = model()
        for name, field in model.model_fields.items():
            if model is ClientSettings and name in Settings.model_fields:
                continue
            extra = field.json_schema_extra
            shown = extra.get("shown", "{}") if isinstance(extra, dict) else "{}"
            value = field.default if isinstance(field.default, str) else getattr(defaults, name)
            rows.append(
                f"| `{field.alias}` | {str(shown).replace('{}', _shown(value))} "
                f"| {field.description} |"
            )
    return "\n".join(rows) + "\n"


def _shown(value: object) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    return f"`{value.as_posix() if isinstance(value, Path) else value}`"


if __name__ == "__main__":  # python -m covidscan.settings: the table the docs show
    print(config_table(), end="")
