"""The kinds of value a setting can hold, each parsed from an environment variable's text.

Each type is ``Annotated[python type, parser]``: the parser turns the text an operator wrote
(``512MB``, ``12h``, ``4096x4096``, ``true``) into the value, or raises ``ValueError`` with
a message that completes "NAME ..." (``must be a whole number, got 'x'``). Values that are
not text (defaults written as Python values) go to pydantic's own checks unchanged.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import urlsplit

from pydantic import BeforeValidator

from covidscan.retrieve_window import RetrieveWindow, parse_window
from covidscan.series_rule import parse_series_rule


def parsed(parse: Callable[[str], Any]) -> BeforeValidator:
    """A pydantic validator that runs ``parse`` on text (stripped) and passes other values."""
    return BeforeValidator(lambda value: parse(value.strip()) if isinstance(value, str) else value)


def whole(raw: str, minimum: int = 1, maximum: Optional[int] = None, unit: str = "") -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum}{unit}, got {value}")
    return value


def byte_size(raw: str) -> int:
    """``1048576``, ``512MB``, ``64MiB`` or ``2G``."""
    text = raw.upper().replace(" ", "")
    units = {
        "": 1,
        "B": 1,
        "K": 1024,
        "KB": 1024,
        "KIB": 1024,
        "M": 1024**2,
        "MB": 1024**2,
        "MIB": 1024**2,
        "G": 1024**3,
        "GB": 1024**3,
        "GIB": 1024**3,
    }
    number = text.rstrip("KMGIB")
    if not number or text[len(number) :] not in units:
        raise ValueError(f"must be a size such as 1048576, 512MB or 2GB, got {raw!r}")
    return whole(number) * units[text[len(number) :]]


def pixel_count(raw: str) -> int:
    """``16777216`` or ``4096x4096``."""
    width, times, height = raw.lower().replace("×", "x").partition("x")
    return whole(width) * whole(height) if times else whole(raw)


def duration(raw: str, minimum: int = 0) -> int:
    """``0``, ``3600``, ``90s``, ``15m``, ``12h`` or ``30d``, in seconds."""
    text = raw.lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit():
        raise ValueError(f"must be a duration such as 0, 3600, 12h or 30d, got {raw!r}")
    seconds = int(number) * units[unit]
    if seconds < minimum:
        raise ValueError(f"must be a duration of at least {minimum} second, got {raw!r}")
    return seconds


def positive_number(raw: str) -> float:
    """``5``, ``2.5``: a finite number greater than 0."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number such as 5 or 2.5, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a number greater than 0, got {raw!r}")
    return value


def choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw.lower()

    return parse


def flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def port(raw: str, minimum: int = 1) -> int:
    try:
        return whole(raw, minimum, 65535)
    except ValueError:
        raise ValueError(f"must be a TCP port between 1 and 65535, got {raw!r}") from None


def rate_limit(raw: str) -> str:
    """``N/second``, ``N/minute``, ``N/hour`` or ``N/day`` (also ``N per minute``)."""
    number, _, period = raw.lower().replace(" per ", "/").partition("/")
    if (
        period not in ("second", "minute", "hour", "day")
        or not number.strip().isdigit()
        or int(number) < 1
    ):
        raise ValueError(
            f"must look like 600/minute (per second, minute, hour or day), got {raw!r}"
        )
    return f"{int(number)}/{period}"


def host_list(raw: str) -> Optional[tuple[str, ...]]:
    """Comma-separated host names (``*`` alone: any host, for a front that checks them)."""
    hosts = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    if hosts == ("*",):
        return None
    for host in hosts:
        if "*" in host or "/" in host or " " in host:
            raise ValueError(
                f"must list host names separated by commas (or be * alone), got {host!r}"
            )
    return hosts


def named_hosts(raw: str) -> tuple[str, ...]:
    """Host names or IP addresses, comma-separated, each named (no wildcard)."""
    hosts = host_list(raw)
    if hosts is None:
        raise ValueError("must name each host (a * would turn SSRF protection off)")
    return tuple(host.strip("[]") for host in hosts)


def ae_titles(raw: str) -> tuple[str, ...]:
    """Comma-separated DICOM AE titles (1 to 16 printable ASCII characters, no backslash)."""
    titles = tuple(part.strip() for part in raw.split(",") if part.strip())
    for title in titles:
        if len(title) > 16 or not title.isascii() or not title.isprintable() or "\\" in title:
            raise ValueError(
                "must list AE titles (1 to 16 printable ASCII characters, no "
                f"backslash) separated by commas, got {title!r}"
            )
    return titles


def database_url(raw: str) -> str:
    """A database URL, with the psycopg 3 driver for plain ``postgresql://``."""
    scheme = urlsplit(raw).scheme
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg://" + raw.split("://", 1)[1]
    if scheme in ("sqlite", "postgresql+psycopg"):
        return raw
    raise ValueError(f"must be a sqlite:/// or postgresql:// URL, got scheme {scheme or 'none'!r}")


def redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return raw


def http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def log_level(raw: str) -> str:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if raw.upper() not in levels:
        raise ValueError(f"must be one of {', '.join(levels)}, got {raw!r}")
    return raw.upper()


def existing_path(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.exists():
        raise ValueError(f"points at {raw!r}, which does not exist")
    return path


def folder(raw: str) -> Path:
    """A directory, made when needed: an existing file is refused."""
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"points at {raw!r}, which is a file, not a directory")
    return path


def existing_folder(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ValueError(f"must be an existing directory, got {raw!r}")
    return path


WEBHOOK_SECRET_PREFIX = "whsec_"
MIN_WEBHOOK_SECRET_BYTES = 24


def webhook_secret(raw: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of at least 24 random bytes."""
    if not raw.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(
            f"must start with {WEBHOOK_SECRET_PREFIX} (whsec_ and base64 of random bytes)"
        )
    try:
        encoded = raw[len(WEBHOOK_SECRET_PREFIX) :]
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {WEBHOOK_SECRET_PREFIX} followed by base64") from None
    if len(key) < MIN_WEBHOOK_SECRET_BYTES:
        raise ValueError(
            f"must hold at least {MIN_WEBHOOK_SECRET_BYTES} bytes "
            f"(base64 of {MIN_WEBHOOK_SECRET_BYTES}), got {len(key)}"
        )
    return raw


PHI_KEY_BYTES = 32


def phi_key(raw: str) -> str:
    """The base64 of exactly 32 random bytes (an AES-256 key); returned as given."""
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "must be the base64 of 32 random bytes, e.g. the output of `openssl rand -base64 32`"
        ) from None
    if len(key) != PHI_KEY_BYTES:
        raise ValueError(f"must be the base64 of exactly {PHI_KEY_BYTES} bytes, got {len(key)}")
    return raw


ENGINES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
"""What INFERENCE_PRECISION and a job's ``precision`` may ask for; ``auto`` is the fastest
engine that passed its accuracy gate on this worker."""
AUTH_MODES = ("on", "off")
METRICS_ACCESS_MODES = ("key", "public")
"""Who may read the API's ``/metrics``: a key with the ``metrics`` (or ``admin``) scope, or
anyone."""
COOKIE_SECURE_MODES = ("auto", "true", "false")

Count = Annotated[int, parsed(whole)]
CountOrZero = Annotated[int, parsed(lambda raw: whole(raw, minimum=0))]
Bytes = Annotated[int, parsed(byte_size)]
Pixels = Annotated[int, parsed(pixel_count)]
Millimetres = Annotated[float, parsed(positive_number)]
Seconds = Annotated[int, parsed(duration)]
PositiveSeconds = Annotated[int, parsed(lambda raw: duration(raw, minimum=1))]
DelayMs = Annotated[int, parsed(lambda raw: whole(raw, 0, 60_000, " (one minute)"))]
Timeout = Annotated[int, parsed(lambda raw: whole(raw, 1, 120, " seconds"))]
Port = Annotated[int, parsed(port)]
PortOrOff = Annotated[int, parsed(lambda raw: port(raw, minimum=0))]
Flag = Annotated[bool, parsed(flag)]
Engine = Annotated[str, parsed(choice(*ENGINES))]
Precision = Annotated[str, parsed(choice(*PRECISIONS))]
AuthMode = Annotated[str, parsed(choice(*AUTH_MODES))]
MetricsAccess = Annotated[str, parsed(choice(*METRICS_ACCESS_MODES))]
CookieSecure = Annotated[str, parsed(choice(*COOKIE_SECURE_MODES))]
LogLevel = Annotated[str, parsed(log_level)]
RateLimit = Annotated[str, parsed(rate_limit)]
Hosts = Annotated[Optional[tuple[str, ...]], parsed(host_list)]
NamedHosts = Annotated[tuple[str, ...], parsed(named_hosts)]
AeTitles = Annotated[tuple[str, ...], parsed(ae_titles)]
DatabaseUrl = Annotated[str, parsed(database_url)]
RedisUrl = Annotated[str, parsed(redis_url)]
HttpUrl = Annotated[Optional[str], parsed(http_url)]
AnyPath = Annotated[Path, parsed(lambda raw: Path(raw).expanduser())]
ExistingPath = Annotated[Optional[Path], parsed(existing_path)]
Folder = Annotated[Path, parsed(folder)]
ExistingFolder = Annotated[Optional[Path], parsed(existing_folder)]
WebhookSecret = Annotated[Optional[str], parsed(webhook_secret)]
PhiKey = Annotated[Optional[str], parsed(phi_key)]
SeriesRule = Annotated[str, parsed(parse_series_rule)]
Window = Annotated[Optional[RetrieveWindow], parsed(parse_window)]
Text = Annotated[str, parsed(lambda raw: raw)]
OptionalText = Annotated[Optional[str], parsed(lambda raw: raw)]
