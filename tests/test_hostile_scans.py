"""Hostile DICOM slices in the worker: each fails alone with its reason, whatever the error,
and the other scans of its batch (other jobs', other owners') are classified normally; a
Deflated slice is decoded, within a limit on how far it inflates."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

from db.blobs import FileBlobStore
from models.loader import ModelInfo
from tests import hostile_slices as h
from tests.dicom_files import ct_bytes
from tests.images import png_bytes
from worker.batching import DynamicBatcher
from worker.inference import classify_batch, predict_items

GOOD_CT = "good.dcm"


@dataclass(frozen=True)
class Item:
    scan_id: str
    blob_key: str
    frame: Optional[int] = None


class MeanEngine:
    """P = the tensor's mean brightness: a slice windowed otherwise would show."""

    name, precision, batch_size = "mean", "fp32", 8
    info = ModelInfo("mean", "1", "a" * 64, True, "test", (32, 32))

    def __init__(self):
        self.batches: list[int] = []

    def predict(self, batch):
        self.batches.append(len(batch))
        return batch.mean(axis=(1, 2, 3)).astype(np.float64)


def hostile_batch() -> dict[str, bytes]:
    files = {
        GOOD_CT: ct_bytes(),
        "good.png": png_bytes(32, 3),
        "deflated.dcm": h.deflated_ct(),
        "deflate-bomb.dcm": h.deflate_bomb(16 * 1024 * 1024),
        "deflate-corrupt.dcm": h.deflate_corrupt(),
    }
    files.update({f"{name}.dcm": h.bad_slice(name) for name in h.BAD_SLICES})
    return files


REASONS = {
    **{f"{name}.dcm": words for name, (_, _, _, words) in h.BAD_SLICES.items()},
    "deflate-bomb.dcm": "inflates to more than 1048576 bytes (MAX_SCAN_BYTES)",
    "deflate-corrupt.dcm": "deflate stream is corrupt",
}


@pytest.fixture
def store(tmp_path):
    return FileBlobStore(tmp_path / "blobs")


def _items(store, files: dict[str, bytes]) -> list[Item]:
    for name, data in files.items():
        store.put(f"job/{name}", data)
    return [Item(name, f"job/{name}") for name in files]


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "pool-and-batcher"])
def test_each_hostile_slice_fails_alone_with_its_reason(store, threaded):
    engine = MeanEngine()
    items = _items(store, hostile_batch())
    pool = ThreadPoolExecutor(2) if threaded else None
    batcher = DynamicBatcher(predict_items, 8, 0.01).start() if threaded else None
    try:
        outcomes = classify_batch(items, store, engine, pool, batcher, max_scan_bytes=1024 * 1024)
    finally:
        if threaded:
            batcher.stop(5)
            pool.shutdown()
    by_name = {o.scan_id: o for o in outcomes}
    assert [o.scan_id for o in outcomes] == [item.scan_id for item in items]
    for name in (GOOD_CT, "good.png", "deflated.dcm"):
        assert by_name[name].error is None and by_name[name].probability_covid > 0, name
    # A Deflated slice is the same slice: the model sees the same pixels.
    assert by_name["deflated.dcm"].probability_covid == by_name[GOOD_CT].probability_covid
    for name, words in REASONS.items():
        outcome = by_name[name]
        assert outcome.probability_covid is None and words in outcome.error, (name, outcome)
        assert "Doe" not in outcome.error and "SECRET" not in outcome.error
    assert sum(engine.batches) == 3  # the failed slices never reached the model


def test_an_unexpected_error_reading_or_decoding_one_scan_fails_that_scan_only(store, monkeypatch):
    """Errors no decoder was written for (a pydicom bug, a lost connection to the store)."""
    import models.dicom
    from covidscan.image_errors import ImageDecodeError

    real = models.dicom.grey_slice

    def grey_slice(data, frame, window, *limits):
        if b"Broken^Decoder" in data:
            raise KeyError("(0010,0010) Broken^Decoder")  # a message quoting the file
        if b"Nul^Bytes" in data:  # a decoder's reason quoting bytes PostgreSQL cannot store
            raise ImageDecodeError("unknown VR 'A\x00' at\r\noffset 12")
        return real(data, frame, window, *limits)

    class FlakyStore(FileBlobStore):
        def get(self, key):
            if key.endswith("unreachable.png"):
                raise ConnectionResetError("connection reset by peer")
            return super().get(key)

    monkeypatch.setattr(models.dicom, "grey_slice", grey_slice)
    flaky = FlakyStore(store.root)
    files = {
        GOOD_CT: ct_bytes(),
        "decoder-bug.dcm": ct_bytes(PatientName="Broken^Decoder"),
        "unreachable.png": png_bytes(32, 1),
        "nul.dcm": ct_bytes(PatientName="Nul^Bytes"),
    }
    outcomes = {o.scan_id: o for o in classify_batch(_items(flaky, files), flaky, MeanEngine())}
    assert outcomes[GOOD_CT].probability_covid > 0
    assert outcomes["decoder-bug.dcm"].error == (
        "could not decode the scan: KeyError while reading, windowing or preprocessing it"
    )
    assert (
        outcomes["unreachable.png"].error
        == "could not read the scan's bytes (ConnectionResetError)"
    )
    assert outcomes["nul.dcm"].error == "unknown VR 'A ' at  offset 12"


def test_a_tensor_with_nan_fails_alone_in_a_batch():
    engine = MeanEngine()
    good = np.full((32, 32, 3), 0.5, dtype=np.float32)
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    results = predict_items(engine, [good, bad, good])
    assert results[0] == results[2] == 0.5 and engine.batches == [2]
    assert str(results[1]) == "the preprocessed tensor holds NaN or infinite values"


def test_a_deflated_bomb_is_refused_without_inflating_it_whole():
    from covidscan.dicom_pixels import inflate
    from covidscan.image_errors import ImageDecodeError

    bomb = h.deflate_bomb(256 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024
    with pytest.raises(ImageDecodeError, match="inflates to more than 67108864 bytes"):
        inflate(bomb)
    with pytest.raises(ImageDecodeError, match="inflates to more than 1048576 bytes"):
        inflate(h.deflate_bomb(8 * 1024 * 1024, meta_padding=8000), 1024 * 1024)
    assert inflate(ct_bytes()) == ct_bytes()  # anything not Deflated is left alone


@pytest.mark.database
def test_a_leased_batch_of_two_owners_fails_only_the_hostile_slices(database_url, tmp_path):
    """The task body: one lease holds both owners' scans; the hostile slices are one
    owner's, and the other's job succeeds whole."""
    from db.jobs import JobOptions, NewScan, create_job, summarise_job
    from db.models import Job, new_id
    from tests.test_drain import Models, runtime_with
    from worker.drain import drain

    class Engine(MeanEngine):
        info = ModelInfo("mean", "1", "a" * 64, True, "test", (16, 16))

    runtime = runtime_with(database_url, tmp_path, Models(Engine()))
    try:

        def submit(owner: str, files: list[bytes]) -> str:
            job_id = new_id()
            scans = []
            for index, data in enumerate(files):
                key = runtime.blobs.key_for(job_id, index)
                runtime.blobs.put(key, data)
                scans.append(NewScan(f"{index}.dcm", key, len(data)))
            with runtime.session_factory.begin() as session:
                create_job(session, scans, job_id, JobOptions(owner=owner))
            return job_id

        hostile = submit(
            "mallory",
            [
                h.bad_slice("slope-abc"),
                h.bad_slice("slope-two-values"),
                h.bad_slice("padding-two-values"),
            ],
        )
        innocent = submit("alice", [ct_bytes(), h.deflated_ct()])
        report = drain(runtime, worker="w@host")
        assert (report.claimed, report.succeeded, report.failed) == (5, 2, 3)
        with runtime.session_factory() as session:
            assert summarise_job(session, innocent).status == "succeeded"
            errors = [s.error for s in session.get(Job, hostile).scans]
            assert summarise_job(session, hostile).status == "failed"
        assert errors == [
            "RescaleSlope is not a number",
            "RescaleSlope must be one number, it holds 2 values",
            "PixelPaddingValue must be one number, it holds 2 values",
        ]
        after = submit("mallory", [ct_bytes()])  # the worker goes on as before
        assert drain(runtime).succeeded == 1
        with runtime.session_factory() as session:
            assert summarise_job(session, after).status == "succeeded"
    finally:
        runtime.close()


@pytest.mark.integration
def test_hostile_slices_fail_alone_in_the_real_worker_beside_another_owners_job(
    stack_config, stack_key, worker
):
    """Through the API, Redis and a real Celery worker: one owner's hostile slices and
    another owner's normal job, submitted together (the worker leases up to BATCH_SIZE
    scans across jobs); only the hostile slices fail, each with its reason."""
    import uuid

    from api import create_app
    from tests.conftest import authorised, create_api_key, wait_for_job

    app = create_app(stack_config)
    mallory = authorised(app.test_client(), stack_key)
    alice = authorised(
        app.test_client(),
        create_api_key(stack_config["DATABASE_URL"], owner=f"alice-{uuid.uuid4().hex[:6]}"),
    )

    def post(client, files: dict[str, bytes]) -> str:
        data = {"files": [(io.BytesIO(d), n) for n, d in files.items()]}
        response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
        assert response.status_code == 202, response.get_json()
        return response.get_json()["id"]

    names = ("slope-abc", "slope-two-values", "slope-nan", "slope-zero", "padding-two-values")
    hostile = post(mallory, {f"{name}.dcm": h.bad_slice(name) for name in names})
    innocent = post(
        alice,
        {"ct.dcm": ct_bytes(), "deflated.dcm": h.deflated_ct(), "slice.png": png_bytes(48, 5)},
    )
    assert wait_for_job(alice, innocent)["status"] == "succeeded"
    assert wait_for_job(mallory, hostile)["status"] == "failed"
    rows = {
        r["filename"]: r for r in mallory.get(f"/v1/jobs/{hostile}/results").get_json()["results"]
    }
    for name in names:
        assert h.BAD_SLICES[name][3] in rows[f"{name}.dcm"]["error"], rows[f"{name}.dcm"]
    good = {
        r["filename"]: r for r in alice.get(f"/v1/jobs/{innocent}/results").get_json()["results"]
    }
    assert good["deflated.dcm"]["probability_covid"] == good["ct.dcm"]["probability_covid"]
    after = post(mallory, {"ct.dcm": ct_bytes()})  # and the worker goes on as before
    assert wait_for_job(mallory, after)["status"] == "succeeded"


def test_refusing_a_deflated_bomb_costs_about_its_limit_in_memory(tmp_path):
    """A 1 GiB bomb (about 1 MB on disk) against a 32 MiB limit, in a fresh interpreter:
    the peak resident memory grows by about the limit, not by what the bomb declares."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "bomb.dcm"
    path.write_bytes(h.deflate_bomb(1024 * 1024 * 1024))
    code = (
        "import json\n"
        "from covidscan.dicom_pixels import grey_slice\n"
        "from covidscan.image_errors import ImageDecodeError\n"
        "import pydicom.filereader, pydicom.filewriter, pydicom.pixels\n"
        "hwm = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
        ".split()[1])\n"
        f"data = open({str(path)!r}, 'rb').read()\n"
        "before = hwm()\n"
        "try:\n"
        "    grey_slice(data, 0, (1500.0, -600.0), 32 * 1024 * 1024); error = None\n"
        "except ImageDecodeError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps({'error': error, 'grew_kb': hwm() - before}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"refusing a 1 GiB Deflated bomb with a 32 MiB limit: peak grew by "
        f"{out['grew_kb'] / 1024:.0f} MiB"
    )
    assert "inflates to more than 33554432 bytes" in out["error"]
    assert out["grew_kb"] < 48 * 1024


@pytest.mark.database
def test_a_reason_quoting_a_nul_byte_is_stored_and_the_lease_written(
    database_url, tmp_path, monkeypatch
):
    """PostgreSQL refuses a NUL in text: stored as is, one scan's reason would fail the
    write of its whole lease, other owners' results with it."""
    import models.dicom
    from covidscan.image_errors import ImageDecodeError
    from db.jobs import JobOptions, NewScan, create_job, summarise_job
    from db.models import Job, new_id
    from tests.test_drain import Models, runtime_with
    from worker.drain import drain

    real = models.dicom.grey_slice

    def grey_slice(data, frame, window, *limits):
        if b"Nul^Bytes" in data:
            raise ImageDecodeError("unknown VR 'A\x00'")
        return real(data, frame, window, *limits)

    monkeypatch.setattr(models.dicom, "grey_slice", grey_slice)

    class Engine(MeanEngine):
        info = ModelInfo("mean", "1", "a" * 64, True, "test", (16, 16))

    runtime = runtime_with(database_url, tmp_path, Models(Engine()))
    try:
        jobs = {}
        for owner, data in (("mallory", ct_bytes(PatientName="Nul^Bytes")), ("alice", ct_bytes())):
            job_id = jobs[owner] = new_id()
            key = runtime.blobs.key_for(job_id, 0)
            runtime.blobs.put(key, data)
            with runtime.session_factory.begin() as session:
                create_job(
                    session, [NewScan("0.dcm", key, len(data))], job_id, JobOptions(owner=owner)
                )
        report = drain(runtime)
        assert (report.claimed, report.written, report.succeeded) == (2, 2, 1)
        with runtime.session_factory() as session:
            assert summarise_job(session, jobs["alice"]).status == "succeeded"
            assert session.get(Job, jobs["mallory"]).scans[0].error == "unknown VR 'A '"
    finally:
        runtime.close()
