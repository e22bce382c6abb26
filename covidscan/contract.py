"""The contract every layer shares: task names, the states of scans, jobs and deliveries,
and the words for true and false.

The API enqueues by name (it never imports the worker or TensorFlow); the worker
registers its task under the same name. ``tests/test_contract.py`` pins both.
Standard library only: the worker, the API, the CLI and the database models import it.
"""

from enum import StrEnum

WAKE_TASK = "covidscan.wake"
"""A wake-up, without arguments: the worker that takes it classifies waiting scans from SQL,
a batch at a time and highest priority first, until none is left. SQL says what must run;
a lost wake-up delays work (until a sweep sends another), a duplicate one changes nothing."""

INFER_QUEUE = "covidscan"
"""Queue the inference tasks travel on."""

BATCHING_STATS_COMMAND = "covidscan_batching"
"""Remote-control command a worker answers with its batching counters."""

DELIVER_TASK = "covidscan.deliver_webhook"
"""One attempt to deliver a job's webhook event, with the event id as its one argument. SQL
says whether the event is due; a duplicate or late message finds it taken and does nothing."""


# States: each set is written here once; the database, the API's JSON, its OpenAPI document,
# the CLI and the page's scripts (served by api/web.py) take them from here.


class ScanStatus(StrEnum):
    """A scan's (or its heatmap's) state: waiting, taken by a worker, or ended."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> tuple["ScanStatus", ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED)


class JobStatus(StrEnum):
    """A job's status, derived from its scans' counts: `open` while it takes more scans,
    `cancelling` while the scans running when it was cancelled finish."""

    OPEN = "open"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @classmethod
    def finished(cls) -> tuple["JobStatus", ...]:
        """The statuses a job ends in (it may run again if an open job takes more scans)."""
        return (cls.SUCCEEDED, cls.PARTIALLY_SUCCEEDED, cls.FAILED, cls.CANCELLED)


class UploadStatus(StrEnum):
    """A two-step upload before it is started: its slices are being uploaded."""

    AWAITING_UPLOAD = "awaiting_upload"


class DeliveryState(StrEnum):
    """A webhook event: waiting for a (next) attempt, or ended."""

    PENDING = "pending"
    DELIVERED = "delivered"
    GONE = "gone"  # the receiver answered 410
    FAILED = "failed"  # retries ran out, or the endpoint was deleted


class DeliveryOutcome(StrEnum):
    """One attempt to deliver a webhook event."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"
    FAILED = "failed"


# The words a query parameter, a form field or a setting may use for true and false.

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_flag(raw: str) -> bool:
    """True or false from one of :data:`TRUE_WORDS` or :data:`FALSE_WORDS` (any case, spaces
    around ignored).

    Raises:
        ValueError: any other word, with a message that lists the accepted ones.
    """
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(
        f"must be true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), got {raw!r}"
    )


class DestinationKind(StrEnum):
    """How results reach a PACS: DICOM C-STORE, or DICOMweb STOW-RS."""

    DICOM = "dicom"
    DICOMWEB = "dicomweb"


class ExportState(StrEnum):
    """Where one result instance sent to a PACS stands: waiting or being retried
    (``pending``), accepted by the destination (``stored``), confirmed kept by DICOM Storage
    Commitment (``committed``), or given up with the destination's reason (``failed``)."""

    PENDING = "pending"
    STORED = "stored"
    COMMITTED = "committed"
    FAILED = "failed"


class ExportKind(StrEnum):
    """What an export sends: a series' Structured Report, or its Grad-CAM overlay as a
    Secondary Capture in the same results series."""

    SR = "sr"
    OVERLAY = "overlay"


class RetrievalStatus(StrEnum):
    """A retrieval (``POST /v1/retrievals``), derived from its items: waiting to be taken,
    waiting for ``RETRIEVE_WINDOW`` to open, being retrieved, or ended (each item has its
    outcome)."""

    QUEUED = "queued"
    WAITING_WINDOW = "waiting_window"
    RUNNING = "running"
    DONE = "done"


class RetrievalOutcome(StrEnum):
    """What came of one item (an accession number or a study UID) of a retrieval."""

    QUEUED = "queued"  # not asked for yet
    FOUND = "found"  # found on the PACS; its CT instances are being retrieved
    RETRIEVED = "retrieved"  # N of M instances retrieved, in the job it made
    NOT_FOUND = "not_found"  # no such study, or no CT series in it
    REFUSED = "refused"  # the PACS (its status and reason) or covidscan (a quota) refused it
    FAILED = "failed"  # the PACS could not be reached, or the gateway died on it

    @classmethod
    def ended(cls) -> tuple["RetrievalOutcome", ...]:
        return (cls.RETRIEVED, cls.NOT_FOUND, cls.REFUSED, cls.FAILED)
