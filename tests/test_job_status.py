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
    assert JobCounts(**counts).status == status
