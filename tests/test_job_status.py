import pytest

from covidscan.contract import JobStatus
from db.jobs import JobCounts


@pytest.mark.parametrize(
    "counts, status",
    [
        (dict(total=3, queued=3), JobStatus.QUEUED),
        (dict(total=3, queued=2, running=1), JobStatus.RUNNING),
        (dict(total=3, queued=2, succeeded=1), JobStatus.RUNNING),
        (dict(total=3, succeeded=3), JobStatus.SUCCEEDED),
        (dict(total=3, succeeded=2, failed=1), JobStatus.PARTIALLY_SUCCEEDED),
        (dict(total=3, failed=3), JobStatus.FAILED),
    ],
)
def test_status_is_derived_from_scan_counts(counts, status):
    assert JobCounts(**counts).status() is status


@pytest.mark.parametrize(
    "counts, status",
    [
        (dict(total=3, running=1, cancelled=2), JobStatus.CANCELLING),
        (dict(total=3, succeeded=1, cancelled=2), JobStatus.CANCELLED),
        (dict(total=3, cancelled=3), JobStatus.CANCELLED),
    ],
)
def test_a_cancelled_job_is_cancelling_until_nothing_runs(counts, status):
    assert JobCounts(**counts).status(cancel_requested=True) is status
