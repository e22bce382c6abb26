"""Domain errors: what went wrong, in the product's terms, never a transport's status.

The core raises them; each adapter maps them once (the API to problem+json statuses, the
DICOM listener to C-STORE statuses, the CLI to messages). ``detail`` is the sentence shown
to the caller; ``extra`` holds fields the caller may act on (a file name, a list of the
missing slices). No patient data goes in either.
"""
from __future__ import annotations

from typing import Any, Optional


class DomainError(Exception):
    """A refusal the caller can understand and act on."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Malformed(DomainError):
    """The request or a file in it is not what it says it is, or asks for no such thing."""


class TooLarge(DomainError):
    """A file, an expansion or a job is over one of the size or count limits."""


class Unsupported(DomainError):
    """A kind of file, transfer or store the product does not take."""


class NotFound(DomainError):
    """No such job (or another owner's: the same answer)."""


class Conflict(DomainError):
    """The job is not in a state that allows this (sealed, cancelled, started already)."""


class OverQuota(DomainError):
    """An owner's limit (scans per hour, unfinished jobs) is reached; try again later."""

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A service the product needs (Redis, the blob store) does not answer; nothing was kept."""

    def __init__(self, detail: str, retry_after: Optional[int] = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after
