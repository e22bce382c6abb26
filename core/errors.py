"""Why the core refuses work, as types: each adapter maps them to its own answer once.

The API turns them into problem+json statuses (``api/problems.py``), the C-STORE listener
into DICOM statuses (``dicomnet/listener.py``), the CLI into messages. None of them carries
a transport's status: a ``TooLarge`` is a 413 to the API and 0xA700 to a PACS.
"""

from __future__ import annotations

from typing import Any, Optional


class IntakeError(Exception):
    """Work the core refuses; ``detail`` says why in a sentence a caller can act on.

    ``extra`` holds members that name what was refused (``filename``, ``skipped``, ...),
    which an adapter may pass on (the API puts them in the problem document).
    """

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def filename(self) -> Optional[str]:
        """The file (or ``archive.zip/entry``) refused, when one file is at fault."""
        return self.extra.get("filename")


class TooLarge(IntakeError):
    """Over a size or count limit: bytes, pixels, frames, entries, expansion, scans per job."""


class Unsupported(IntakeError):
    """A kind of content the product does not take (file type, SOP class, modality)."""


class Malformed(IntakeError):
    """Content that cannot be read as what it claims to be: a header, an archive, a name."""


class OverQuota(IntakeError):
    """The owner has used up a quota (scans per hour, active jobs); ``retry_after`` in
    seconds when the quota frees up on its own."""

    def __init__(self, detail: str, retry_after: Optional[int] = None, **extra: Any) -> None:
        if retry_after is not None:
            extra["retry_after"] = retry_after
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class Conflict(IntakeError):
    """The work's state does not allow it (a sealed or cancelled job, parts not uploaded)."""


class NotFound(IntakeError):
    """No such job (or one the caller may not see: the same answer)."""


class Gone(IntakeError):
    """What the work needs was kept once and is deleted now (a job's stored slices)."""


class Unusable(IntakeError):
    """Content accepted earlier that cannot serve what is asked of it now (a slice's header
    a report cannot reference); asking again gives the same answer."""


class Unavailable(IntakeError):
    """A service the work needs (Redis, which holds the quotas) does not answer; nothing
    was kept, and the same request may succeed later."""
