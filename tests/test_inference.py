"""The worker's batch logic, called as plain functions on a real blob store."""

import numpy as np
import pytest

from db.blobs import FileBlobStore
from db.scans import Lease, ScanOutcome
from models.loader import ModelInfo
from tests.images import corrupt_png, png_bytes
from worker.inference import classify_batch


class MeanBrightnessEngine:
    """Stands in for a model in these unit tests: P = mean pixel value; NaN for a black image."""

    name, precision, batch_size = "test-engine", "fp32", 4
    info = ModelInfo(
        name="mean", version="1", sha256="a" * 64, trained=True, format="test", input_size=(16, 16)
    )

    def __init__(self):
        self.calls = []

    def predict(self, batch):
        self.calls.append(len(batch))
        means = batch.mean(axis=(1, 2, 3)).astype(np.float64)
        return np.where(means == 0, np.nan, means)


@pytest.fixture
def store(tmp_path):
    return FileBlobStore(tmp_path / "blobs")


def black_png():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_batch_returns_one_outcome_per_scan_in_order_and_bad_scans_fail_alone(store):
    payloads = [png_bytes(32, 1), corrupt_png(), png_bytes(32, 2), black_png()]
    items = []
    for i, data in enumerate(payloads):
        store.put(f"j/{i}", data)
        items.append(Lease(f"s{i}", "j", f"j/{i}", 1))
    items.append(Lease("missing", "j", "j/404", 1))
    engine = MeanBrightnessEngine()
    outcomes = classify_batch(items, store, engine)
    assert [o.scan_id for o in outcomes] == ["s0", "s1", "s2", "s3", "missing"]
    assert engine.calls == [3]  # undecodable and missing scans never reach the model
    assert outcomes[0].probability_covid > 0 and outcomes[0].error is None
    assert "truncated or corrupt" in outcomes[1].error
    assert outcomes[3].error == "the model produced a non-finite probability"
    assert "missing from the blob store" in outcomes[4].error


def test_an_outcome_has_a_probability_or_an_error_never_both():
    with pytest.raises(ValueError):
        ScanOutcome("x", probability_covid=0.5, error="boom")
    with pytest.raises(ValueError):
        ScanOutcome("x")


@pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "job/../../x", ""])
def test_blob_keys_cannot_leave_the_blob_directory(store, key):
    with pytest.raises(ValueError, match="escapes"):
        store.get(key)
