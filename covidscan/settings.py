"""Configuration from environment variables, read and validated in one place.

Each process (API, worker, local stack, CLI) calls :func:`load_settings` once at
start-up. A wrong value raises :class:`ConfigError` naming the variable, and the
entry points turn that into a one-line message and a non-zero exit.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, TypeVar
from urllib.parse import urlsplit

from db.blobs import S3Location

T = TypeVar("T")

DEFAULT_VAR_DIR = Path("var")
ENGINES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
"""What INFERENCE_PRECISION and a job's ``precision`` may ask for; ``auto`` is the fastest
engine that passed its accuracy gate on this worker."""
AUTH_MODES = ("on", "off")
METRICS_ACCESS_MODES = ("key", "public")
"""Who may read the API's ``/metrics``: a key with the ``metrics`` (or ``admin``) scope, or anyone."""
COOKIE_SECURE_MODES = ("auto", "true", "false")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
API_KEY_FILE_NAME = "api-key"


class ConfigError(ValueError):
    """A configuration variable is missing or has an invalid value."""


@dataclass(frozen=True)
class Settings:
    """Everything a covidscan process can be configured with.

    The README's configuration table documents each field under its
    environment variable name (the field name in upper case).
    """

    database_url: str
    redis_url: str
    blob_dir: Path
    blob_store: Optional[S3Location] = None
    """``BLOB_STORE=s3://BUCKET/PREFIX`` (with S3_ENDPOINT_URL and the AWS_* variables), else
    None: the directory BLOB_DIR."""
    upload_url_seconds: int = 3600
    model_path: Optional[Path] = None
    model_store_dir: Path = DEFAULT_VAR_DIR / "models"
    max_loaded_models: int = 2
    batch_size: int = 32
    max_upload_bytes: int = 512 * 1024 * 1024
    max_scan_bytes: int = 64 * 1024 * 1024
    max_scans_per_job: int = 10_000
    max_scan_pixels: int = 4096 * 4096
    max_expanded_bytes: int = 512 * 1024 * 1024
    max_archive_entries: int = 10_000
    max_compression_ratio: int = 200
    trusted_hosts: Optional[tuple[str, ...]] = ("localhost", "127.0.0.1")
    model_trust_code: bool = False
    visibility_timeout: int = 3600
    worker_prefetch: int = 2
    worker_concurrency: int = 64
    max_batch_size: int = 32
    max_queue_delay_ms: int = 200
    inference_engine: str = "auto"
    inference_precision: str = "fp32"
    engine_cache_dir: Path = DEFAULT_VAR_DIR / "engine-cache"
    port: int = 5000
    log_level: str = "INFO"
    auth: str = "on"
    api_host: str = "127.0.0.1"
    api_key_file: Path = DEFAULT_VAR_DIR / API_KEY_FILE_NAME
    session_hours: int = 12
    session_cookie_secure: str = "auto"
    rate_limit: str = "3000/minute"
    scans_per_hour: int = 100_000
    max_active_jobs: int = 500
    failed_auth_limit: str = "60/minute"
    proxy_hops: int = 0
    lease_seconds: int = 15
    sweep_interval: int = 5
    max_attempts: int = 3
    job_retention: int = 30 * 86400
    open_job_timeout: int = 3600
    webhook_secret: Optional[str] = field(default=None, repr=False)  # never in a log line
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_timeout: int = 10
    webhook_retry_base_ms: int = 30_000
    webhook_retry_window: int = 86400
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_access: str = "key"
    prometheus_multiproc_dir: Optional[Path] = None
    series_rule: str = "top10pct-mean"
    dicom_allowed_ae_titles: tuple[str, ...] = ()
    """Calling AE titles the C-STORE listener accepts associations from; empty: any."""

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on"

    @property
    def recovery_seconds(self) -> int:
        """How long after a worker's death its scans are back in the queue, at most."""
        return self.lease_seconds + self.sweep_interval

    def with_overrides(self, **changes: object) -> "Settings":
        """Return a copy with some fields replaced (used by tests and the local stack)."""
        return replace(self, **changes)


def _positive_int(name: str, raw: str, minimum: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _byte_size(name: str, raw: str) -> int:
    """Parse sizes such as ``1048576``, ``512MB``, ``64MiB`` or ``2G``."""
    text = raw.strip().upper().replace(" ", "")
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
             "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}
    number = text.rstrip("KMGIB")
    unit = text[len(number):]
    if not number or unit not in units:
        raise ConfigError(f"{name} must be a size such as 1048576, 512MB or 2GB, got {raw!r}")
    value = _positive_int(name, number) * units[unit]
    return value


def normalise_database_url(name: str, raw: str) -> str:
    """Validate a database URL and pick the psycopg 3 driver for plain ``postgresql://``."""
    scheme = urlsplit(raw).scheme
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg://" + raw.split("://", 1)[1]
    if scheme in ("sqlite", "postgresql+psycopg"):
        return raw
    raise ConfigError(
        f"{name} must be a sqlite:/// or postgresql:// URL, got scheme {scheme or 'none'!r}"
    )


def _redis_url(name: str, raw: str) -> str:
    if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{name} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {raw!r}")
    return level


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value
    return parse


def _delay_ms(name: str, raw: str) -> int:
    value = _positive_int(name, raw, minimum=0)
    if value > 60_000:
        raise ConfigError(f"{name} must be at most 60000 (one minute), got {value}")
    return value


def _model_path(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.exists():
        raise ConfigError(f"{name} points at {raw!r}, which does not exist")
    return path


def _store_dir(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} points at {raw!r}, which is a file, not a directory")
    return path


def _read(env: Mapping[str, str], name: str, parse: Callable[[str, str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return parse(name, raw.strip())


def _default(name: str):
    """A field's default, as written once in :class:`Settings`."""
    return Settings.__dataclass_fields__[name].default


def _duration(name: str, raw: str) -> int:
    """Parse ``0``, ``3600``, ``90s``, ``15m``, ``12h`` or ``30d`` into seconds."""
    text = raw.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1:] if text[-1:] in units else "s"
    number = text[:-1] if text[-1:] in units else text
    if not number.isdigit():
        raise ConfigError(f"{name} must be a duration such as 0, 3600, 12h or 30d, got {raw!r}")
    return int(number) * units[unit]


def _positive_duration(name: str, raw: str) -> int:
    seconds = _duration(name, raw)
    if seconds < 1:
        raise ConfigError(f"{name} must be a duration of at least 1 second, got {raw!r}")
    return seconds


def load_settings(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Read settings from ``env`` (default: ``os.environ``).

    Raises:
        ConfigError: a variable has an invalid value; the message names it.
    """
    env = os.environ if env is None else env
    var_dir = Path(env.get("COVIDSCAN_VAR_DIR") or DEFAULT_VAR_DIR)

    def read(name: str, parse: Callable[[str, str], T], default: object = None) -> T:
        field = name.lower()
        return _read(env, name, parse, _default(field) if default is None else default)

    max_batch_size = read("MAX_BATCH_SIZE", _positive_int)
    max_upload_bytes = read("MAX_UPLOAD_BYTES", _byte_size)
    lease_seconds = read("LEASE_SECONDS", _positive_int)
    return Settings(
        database_url=read("DATABASE_URL", normalise_database_url,
                          f"sqlite:///{(var_dir / 'covidscan.db').as_posix()}"),
        redis_url=read("REDIS_URL", _redis_url, "redis://127.0.0.1:6379/0"),
        blob_dir=read("BLOB_DIR", lambda _n, raw: Path(raw), var_dir / "blobs"),
        blob_store=_s3_location(env),
        upload_url_seconds=read("UPLOAD_URL_SECONDS", _positive_int),
        model_path=_read(env, "MODEL_PATH", _model_path, None),
        model_store_dir=read("MODEL_STORE_DIR", _store_dir, var_dir / "models"),
        max_loaded_models=read("MAX_LOADED_MODELS", _positive_int),
        batch_size=read("BATCH_SIZE", _positive_int),
        max_upload_bytes=max_upload_bytes,
        max_scan_bytes=read("MAX_SCAN_BYTES", _byte_size),
        max_scans_per_job=read("MAX_SCANS_PER_JOB", _positive_int),
        max_scan_pixels=read("MAX_SCAN_PIXELS", _pixel_count),
        max_expanded_bytes=read("MAX_EXPANDED_BYTES", _byte_size, max_upload_bytes),
        max_archive_entries=read("MAX_ARCHIVE_ENTRIES", _positive_int),
        max_compression_ratio=read("MAX_COMPRESSION_RATIO", _positive_int),
        trusted_hosts=read("TRUSTED_HOSTS", _host_list),
        model_trust_code=read("MODEL_TRUST_CODE", _flag),
        visibility_timeout=read("VISIBILITY_TIMEOUT", _positive_int),
        worker_prefetch=read("WORKER_PREFETCH", _positive_int),
        worker_concurrency=read("WORKER_CONCURRENCY", _positive_int, 2 * max_batch_size),
        max_batch_size=max_batch_size,
        max_queue_delay_ms=read("MAX_QUEUE_DELAY_MS", _delay_ms),
        inference_engine=read("INFERENCE_ENGINE", _choice(ENGINES)),
        inference_precision=read("INFERENCE_PRECISION", _choice(PRECISIONS)),
        engine_cache_dir=read("ENGINE_CACHE_DIR", lambda _n, raw: Path(raw),
                              var_dir / "engine-cache"),
        port=read("PORT", _port),
        log_level=read("LOG_LEVEL", _log_level),
        lease_seconds=lease_seconds,
        sweep_interval=read("SWEEP_INTERVAL", _positive_int,
                            min(_default("sweep_interval"), lease_seconds)),
        max_attempts=read("MAX_ATTEMPTS", _positive_int),
        job_retention=read("JOB_RETENTION", _duration),
        open_job_timeout=read("OPEN_JOB_TIMEOUT", _positive_duration),
        metrics_port=read("METRICS_PORT", _optional_port),
        metrics_host=read("METRICS_HOST", lambda _n, raw: raw),
        metrics_access=read("METRICS_ACCESS", _choice(METRICS_ACCESS_MODES)),
        prometheus_multiproc_dir=_read(env, "PROMETHEUS_MULTIPROC_DIR", _existing_dir, None),
        series_rule=read("SERIES_RULE", _series_rule),
        dicom_allowed_ae_titles=read("DICOM_ALLOWED_AE_TITLES", _ae_titles),
        **_access_settings(env, var_dir),
        **_webhook_settings(env),
    )


WEBHOOK_SECRET_PREFIX = "whsec_"
MIN_WEBHOOK_SECRET_BYTES = 24


def webhook_secret(name: str, raw: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of at least 24 random bytes.

    Raises:
        ConfigError: another prefix, not base64, or too short (the message names ``name``).
    """
    text = raw.strip()
    if not text.startswith(WEBHOOK_SECRET_PREFIX):
        raise ConfigError(f"{name} must start with {WEBHOOK_SECRET_PREFIX} "
                          f"(whsec_ and base64 of random bytes)")
    try:
        encoded = text[len(WEBHOOK_SECRET_PREFIX):]
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} must be {WEBHOOK_SECRET_PREFIX} followed by base64") from None
    if len(key) < MIN_WEBHOOK_SECRET_BYTES:
        raise ConfigError(f"{name} must hold at least {MIN_WEBHOOK_SECRET_BYTES} bytes "
                          f"(base64 of {MIN_WEBHOOK_SECRET_BYTES}), got {len(key)}")
    return text


def _webhook_settings(env: Mapping[str, str]) -> dict[str, object]:
    """Where job events may be sent, how they are signed and how long delivery is retried."""
    window = _read(env, "WEBHOOK_RETRY_WINDOW", _duration, _default("webhook_retry_window"))
    if window < 1:
        raise ConfigError("WEBHOOK_RETRY_WINDOW must be at least 1 second, got 0")
    return {
        "webhook_secret": _read(env, "WEBHOOK_SECRET", webhook_secret, None),
        "webhook_allowed_hosts": _read(env, "WEBHOOK_ALLOWED_HOSTS", _allowed_hosts, ()),
        "webhook_timeout": _read(env, "WEBHOOK_TIMEOUT", _timeout,
                                 _default("webhook_timeout")),
        "webhook_retry_base_ms": _read(env, "WEBHOOK_RETRY_BASE_MS", _positive_int,
                                       _default("webhook_retry_base_ms")),
        "webhook_retry_window": window,
    }


def _allowed_hosts(name: str, raw: str) -> tuple[str, ...]:
    """Host names or IP addresses, comma-separated (no wildcards: each is named)."""
    hosts = _host_list(name, raw)
    if hosts is None:
        raise ConfigError(f"{name} must name each host (a * would turn SSRF protection off)")
    return tuple(host.strip("[]") for host in hosts)


def _timeout(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > 120:
        raise ConfigError(f"{name} must be at most 120 seconds, got {value}")
    return value


def _access_settings(env: Mapping[str, str], var_dir: Path) -> dict[str, object]:
    """Authentication, sessions, rate limits and quotas.

    ``AUTH=off`` is refused unless ``API_HOST`` is a loopback address.
    """
    auth = _read(env, "AUTH", _choice(AUTH_MODES), _default("auth"))
    api_host = _read(env, "API_HOST", lambda _n, raw: raw, _default("api_host"))
    if auth == "off" and api_host not in LOOPBACK_HOSTS:
        raise ConfigError(f"AUTH=off is allowed only when API_HOST is a loopback address "
                          f"({', '.join(LOOPBACK_HOSTS)}), got API_HOST={api_host!r}")
    return {
        "auth": auth,
        "api_host": api_host,
        "api_key_file": _read(env, "API_KEY_FILE", lambda _n, raw: Path(raw).expanduser(),
                              var_dir / API_KEY_FILE_NAME),
        "session_hours": _read(env, "SESSION_HOURS", _positive_int, _default("session_hours")),
        "session_cookie_secure": _read(env, "SESSION_COOKIE_SECURE",
                                       _choice(COOKIE_SECURE_MODES),
                                       _default("session_cookie_secure")),
        "rate_limit": _read(env, "RATE_LIMIT", _rate_limit, _default("rate_limit")),
        "scans_per_hour": _read(env, "SCANS_PER_HOUR", _positive_int,
                                _default("scans_per_hour")),
        "max_active_jobs": _read(env, "MAX_ACTIVE_JOBS", _positive_int,
                                 _default("max_active_jobs")),
        "failed_auth_limit": _read(env, "FAILED_AUTH_LIMIT", _rate_limit,
                                   _default("failed_auth_limit")),
        "proxy_hops": _read(env, "PROXY_HOPS", lambda n, raw: _positive_int(n, raw, minimum=0),
                            _default("proxy_hops")),
    }


SERIES_RULE = re.compile(r"^(?:top(?P<percent>[1-9][0-9]?|100)pct-mean|mean|max)$")


def _series_rule(name: str, raw: str) -> str:
    """How a DICOM series' P(COVID) is made: ``topNpct-mean`` (N = 1…100), ``mean`` or ``max``."""
    text = raw.strip().lower()
    if not SERIES_RULE.match(text):
        raise ConfigError(f"{name} must be topNpct-mean (N from 1 to 100, e.g. top10pct-mean), "
                          f"mean or max, got {raw!r}")
    return text
def _endpoint_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _s3_location(env: Mapping[str, str]) -> Optional[S3Location]:
    """``BLOB_STORE=s3://BUCKET/PREFIX`` and how to reach it; None (the filesystem store,
    BLOB_DIR) when BLOB_STORE is unset. Credentials: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN), else boto3's own chain (an instance
    or pod role)."""
    raw = (env.get("BLOB_STORE") or "").strip()
    key_id = (env.get("AWS_ACCESS_KEY_ID") or "").strip() or None
    secret = (env.get("AWS_SECRET_ACCESS_KEY") or "").strip() or None
    token = (env.get("AWS_SESSION_TOKEN") or "").strip() or None
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1").strip()
    endpoint = _read(env, "S3_ENDPOINT_URL", _endpoint_url, None)
    public = _read(env, "S3_PUBLIC_ENDPOINT_URL", _endpoint_url, endpoint)
    if not raw:
        return None
    parts = urlsplit(raw)
    bucket = parts.netloc
    if parts.scheme != "s3" or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) \
            or parts.query or parts.fragment:
        raise ConfigError("BLOB_STORE must be s3://BUCKET or s3://BUCKET/PREFIX (a bucket name "
                          f"of 3-63 lower-case letters, digits, dots and dashes), got {raw!r}; "
                          "leave it unset to keep blobs in BLOB_DIR")
    prefix = parts.path.strip("/")
    if ".." in prefix.split("/"):
        raise ConfigError(f"BLOB_STORE's prefix must not contain '..', got {raw!r}")
    if bool(key_id) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        raise ConfigError(f"{missing} is missing: set both AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY, or neither (to use the instance's role)")
    return S3Location(bucket=bucket, prefix=prefix + "/" if prefix else "",
                      endpoint_url=endpoint, public_endpoint_url=public, region=region,
                      access_key_id=key_id, secret_access_key=secret, session_token=token)


def _rate_limit(name: str, raw: str) -> str:
    """``N/second``, ``N/minute``, ``N/hour`` or ``N/day`` (also ``N per minute``)."""
    text = raw.strip().lower().replace(" per ", "/")
    number, _, period = text.partition("/")
    if period not in ("second", "minute", "hour", "day") or not number.strip().isdigit() \
            or int(number) < 1:
        raise ConfigError(f"{name} must look like 600/minute (per second, minute, hour or day), "
                          f"got {raw!r}")
    return f"{int(number)}/{period}"


def client_api_key(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The key the CLI sends: ``COVIDSCAN_API_KEY``, else the file ``make run`` saved
    (``API_KEY_FILE``, default ``<COVIDSCAN_VAR_DIR>/api-key``); None if neither."""
    env = os.environ if env is None else env
    key = (env.get("COVIDSCAN_API_KEY") or "").strip()
    if key:
        return key
    var_dir = Path(env.get("COVIDSCAN_VAR_DIR") or DEFAULT_VAR_DIR)
    path = Path(env.get("API_KEY_FILE") or var_dir / API_KEY_FILE_NAME).expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _pixel_count(name: str, raw: str) -> int:
    """``16777216`` or ``4096x4096``."""
    text = raw.strip().lower().replace("×", "x")
    if "x" in text:
        width, _, height = text.partition("x")
        return _positive_int(name, width) * _positive_int(name, height)
    return _positive_int(name, text)


def _ae_titles(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated DICOM AE titles (1 to 16 characters of printable ASCII, no backslash)."""
    titles = tuple(part.strip() for part in raw.split(",") if part.strip())
    for title in titles:
        if len(title) > 16 or not title.isascii() or not title.isprintable() or "\\" in title:
            raise ConfigError(f"{name} must list AE titles (1 to 16 printable ASCII characters, "
                              f"no backslash) separated by commas, got {title!r}")
    return titles


def _host_list(name: str, raw: str) -> Optional[tuple[str, ...]]:
    """Comma-separated host names (``*`` alone: any host, for a front that checks them)."""
    hosts = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    if hosts == ("*",):
        return None
    for host in hosts:
        if "*" in host or "/" in host or " " in host:
            raise ConfigError(f"{name} must list host names separated by commas "
                              f"(or be * alone), got {host!r}")
    return hosts


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _port(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port between 1 and 65535, got {value}")
    return value


def _optional_port(name: str, raw: str) -> int:
    """A TCP port, or 0 for none."""
    return 0 if raw.strip() == "0" else _port(name, raw)


def _existing_dir(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{name} must be an existing directory, got {raw!r}")
    return path


class _ReadRecorder(Mapping[str, str]):
    """An empty environment that remembers every name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variable_names() -> frozenset[str]:
    """The names of every environment variable :func:`load_settings` reads.

    Found by letting it read an empty, recording environment, so the list cannot
    drift from the code (deployment files and their tests check against it).
    """
    recorder = _ReadRecorder()
    load_settings(recorder)
    return frozenset(recorder.names)
