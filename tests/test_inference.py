"""The worker's batch logic, called as plain functions on a real database and blob store."""
import numpy as np
import pytest

from db.blobs import BlobStore
from db.jobs import NewScan, create_job, summarise_job
from db.models import Scan, ScanStatus, new_id
from db.scans import ModelIdentity, record_outcomes, ScanOutcome
from db.session import make_engine, make_session_factory
from models.loader import ModelInfo
from tests.images import corrupt_png, png_bytes
from worker.inference import ScanInput, classify_batch, classify_chunk


class MeanBrightnessEngine:
    """Stands in for a model in these unit tests: P = mean pixel value; NaN for a black image."""

    name, precision, batch_size = "test-engine", "fp32", 4
    info = ModelInfo(name="mean", version="1", sha256="a" * 64, trained=True, format="test",
                     input_size=(16, 16))

    def __init__(self):
        self.calls = []

    def predict(self, batch):
        self.calls.append(len(batch))
        means = batch.mean(axis=(1, 2, 3)).astype(np.float64)
        return np.where(means == 0, np.nan, means)


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def sessions(database_url):
    factory = make_session_factory(make_engine(database_url))
    yield factory
    factory.kw["bind"].dispose()


def make_job(sessions, store, payloads):
    job_id = new_id()
    new = []
    for i, data in enumerate(payloads):
        key = store.key_for(job_id, i)
        store.put(key, data)
        new.append(NewScan(f"f{i}.png", key, len(data)))
    with sessions.begin() as session:
        job = create_job(session, "t", new, job_id)
        session.flush()
        return job_id, [s.id for s in job.scans]


def black_png():
    from PIL import Image
    import io
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_batch_returns_one_outcome_per_scan_in_order_and_bad_scans_fail_alone(store):
    payloads = [png_bytes(32, 1), corrupt_png(), png_bytes(32, 2), black_png()]
    items = []
    for i, data in enumerate(payloads):
        store.put(f"j/{i}", data)
        items.append(ScanInput(f"s{i}", f"j/{i}"))
    items.append(ScanInput("missing", "j/404"))
    engine = MeanBrightnessEngine()
    outcomes = classify_batch(items, store, engine)
    assert [o.scan_id for o in outcomes] == ["s0", "s1", "s2", "s3", "missing"]
    assert engine.calls == [3]  # undecodable and missing scans never reach the model
    assert outcomes[0].probability_covid > 0 and outcomes[0].error is None
    assert "truncated or corrupt" in outcomes[1].error
    assert outcomes[3].error == "the model produced a non-finite probability"
    assert "missing from the blob store" in outcomes[4].error


@pytest.mark.database
def test_a_chunk_delivered_twice_neither_duplicates_nor_changes_results(sessions, store):
    job_id, scan_ids = make_job(sessions, store, [png_bytes(32, i) for i in range(5)]
                                + [corrupt_png()])
    engine = MeanBrightnessEngine()
    first = classify_chunk(sessions, store, engine, scan_ids, worker="first@host")
    assert (first.claimed, first.succeeded, first.failed) == (6, 5, 1)
    with sessions() as session:
        before = {s.id: (s.status, s.probability_covid, s.finished_at, s.worker)
                  for s in session.query(Scan).filter_by(job_id=job_id)}
    assert {row[3] for row in before.values()} == {"first@host"}
    second = classify_chunk(sessions, store, engine, scan_ids, worker="second@host")
    assert second.claimed == 0 and engine.calls == [5]
    with sessions() as session:
        after = {s.id: (s.status, s.probability_covid, s.finished_at, s.worker)
                 for s in session.query(Scan).filter_by(job_id=job_id)}
        summary = summarise_job(session, job_id)
    assert after == before
    assert summary.status == "partially_succeeded" and summary.counts.total == 6
    assert summary.finished_at is not None


@pytest.mark.database
def test_recording_twice_keeps_the_first_result(sessions, store):
    job_id, (scan_id,) = make_job(sessions, store, [png_bytes(16)])
    identity = ModelIdentity("m", "1", "b" * 64, False, "tensorflow", "fp32", "seed-v1")
    with sessions.begin() as session:
        assert record_outcomes(session, [ScanOutcome(scan_id, 0.25, "NonCOVID")], identity) == 1
    with sessions.begin() as session:
        assert record_outcomes(session, [ScanOutcome(scan_id, 0.75, "COVID")], identity) == 0
    with sessions() as session:
        scan = session.get(Scan, scan_id)
        assert (scan.status, scan.probability_covid) == (ScanStatus.SUCCEEDED, 0.25)


def test_an_outcome_has_a_probability_or_an_error_never_both():
    with pytest.raises(ValueError):
        ScanOutcome("x", probability_covid=0.5, error="boom")
    with pytest.raises(ValueError):
        ScanOutcome("x")


@pytest.mark.database
def test_concurrent_chunks_share_batches_and_transactions_and_each_gets_its_own_results(
        sessions, store):
    from concurrent.futures import ThreadPoolExecutor

    from worker.batching import DynamicBatcher
    from worker.group_commit import GroupCommit
    from worker.inference import predict_items

    jobs = [make_job(sessions, store, [png_bytes(32, i)]) for i in range(12)]
    jobs.append(make_job(sessions, store, [png_bytes(32, 50 + i) for i in range(5)] + [corrupt_png()]))
    engine = MeanBrightnessEngine()
    batcher = DynamicBatcher(predict_items, max_batch_size=8, max_delay_s=0.2).start()
    group = GroupCommit(sessions).start()
    try:
        with ThreadPoolExecutor(2) as decode, ThreadPoolExecutor(len(jobs)) as tasks:
            run = lambda ids: classify_chunk(sessions, store, engine, ids, decode, batcher, group)
            reports = list(tasks.map(run, [ids for _, ids in jobs]))
            again = list(tasks.map(run, [ids for _, ids in jobs]))
    finally:
        batcher.stop(5)
        group.stop(5)
    assert [(r.claimed, r.written, r.failed) for r in reports] == [(1, 1, 0)] * 12 + [(6, 6, 1)]
    assert all(r.claimed == 0 for r in again)
    assert sum(engine.calls) == 17 and max(engine.calls) > 1  # scans of many jobs shared batches
    with sessions() as session:
        statuses = [summarise_job(session, job_id).status for job_id, _ in jobs]
    assert statuses == ["succeeded"] * 12 + ["partially_succeeded"]


@pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "job/../../x", ""])
def test_blob_keys_cannot_leave_the_blob_directory(store, key):
    with pytest.raises(ValueError, match="escapes"):
        store.get(key)
