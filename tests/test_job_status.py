import pytest

from db.jobs import JobCounts


@pytest.mark.parametrize("counts, status", [
    (dict(total=3, queued=3), "queued"),
    (dict(total=3, queued=2, running=1), "running"),
    (dict(total=3, queued=2, succeeded=1), "running"),
    (dict(total=3, succeeded=3), "succeeded"),
    (dict(total=3, succeeded=2, failed=1), "partially_succeeded"),
    (dict(total=3, failed=3), "failed"),
])
def test_status_is_derived_from_scan_counts(counts, status):
    assert JobCounts(**counts).status() == status


@pytest.mark.parametrize("counts, status", [
    (dict(total=3, running=1, cancelled=2), "cancelling"),
    (dict(total=3, succeeded=1, cancelled=2), "cancelled"),
    (dict(total=3, cancelled=3), "cancelled"),
])
def test_a_cancelled_job_is_cancelling_until_nothing_runs(counts, status):
    assert JobCounts(**counts).status(cancel_requested=True) == status
