"""The task body as a plain function: a fake engine stands in for the model, everything
else (database, blob store, decode pool, batcher) is real."""

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from covidscan.settings import load_settings
from db.blobs import FileBlobStore
from db.explanations import queue_job_explanations
from db.jobs import JobOptions, NewScan, create_job, summarise_job
from db.models import Job, Scan, ScanStatus, new_id
from db.session import make_engine, make_session_factory
from models.loader import ModelInfo
from tests.images import corrupt_png, png_bytes
from worker.batching import DynamicBatcher
from worker.drain import drain
from worker.inference import predict_items
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.database


class Engine:
    """P = mean pixel value; raises like a broken engine for an image brighter than ``boom``."""

    name, precision, batch_size = "test-engine", "fp32", 4
    info = ModelInfo(
        name="mean", version="1", sha256="a" * 64, trained=True, format="test", input_size=(16, 16)
    )

    def __init__(self, boom=2.0):
        self.boom, self.seen = boom, 0

    def predict(self, batch):
        means = batch.mean(axis=(1, 2, 3)).astype(np.float64)
        if (means > self.boom).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.seen += len(batch)
        return means


class Models:
    """The model cache's shape: engines by model id, then by precision."""

    def __init__(self, engine):
        self.engine = engine
        self.model = engine  # what unpinned jobs are pinned to: its ``info``

    def engines_for(self, model_id):
        return self

    def get(self, precision=None):
        return self.engine


class NoWakeups:
    def __call__(self, tasks):
        pass

    def close(self):
        pass


def runtime_with(database_url, tmp_path, models) -> WorkerRuntime:
    """The task body's runtime on a real database and folder store, serving ``models``."""
    settings = load_settings(
        {"DATABASE_URL": database_url, "BLOB_DIR": str(tmp_path / "blobs"), "BATCH_SIZE": "4"}
    )
    return WorkerRuntime(
        settings=settings,
        session_factory=make_session_factory(make_engine(database_url)),
        blobs=FileBlobStore(settings.blob_dir),
        models=models,
        decode_pool=ThreadPoolExecutor(2),
        batcher=DynamicBatcher(predict_items, 4, 0.01).start(),
        owner="test/1",
        claim_slots=threading.BoundedSemaphore(2),
        send_wakeups=NoWakeups(),
    )


@pytest.fixture
def runtime(database_url, tmp_path):
    built = runtime_with(database_url, tmp_path, Models(Engine()))
    yield built
    built.close()


def submit(runtime, payloads, explain=None):
    """A job of ``payloads`` stored in the runtime's blob store (with ``explain``, every
    scan's explanation queued as at submission)."""
    job_id = new_id()
    scans = []
    for i, data in enumerate(payloads):
        key = runtime.blobs.key_for(job_id, i)
        runtime.blobs.put(key, data)
        scans.append(NewScan(f"{i}.png", key, len(data)))
    with runtime.session_factory.begin() as session:
        job = create_job(session, scans, job_id, JobOptions(chunk_size=4, explain=explain))
        if explain:
            queue_job_explanations(session, job)
    return job_id


def white_png():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (16, 16), color=255).save(buffer, "PNG")
    return buffer.getvalue()


def scans_of(runtime, job_id):
    with runtime.session_factory() as session:
        return session.get(Job, job_id).scans


def test_a_drain_classifies_every_waiting_scan_a_batch_at_a_time(runtime):
    job = submit(runtime, [png_bytes(32, i) for i in range(9)] + [corrupt_png()])
    report = drain(runtime, worker="w@host")
    assert (report.claimed, report.written, report.succeeded, report.failed) == (10, 10, 9, 1)
    scans = scans_of(runtime, job)
    assert {s.status for s in scans[:9]} == {ScanStatus.SUCCEEDED}
    assert all(s.result_writes == 1 and s.lease_owner is None for s in scans)
    assert drain(runtime).claimed == 0  # a duplicated wake-up finds nothing


def test_an_unexpected_error_fails_only_its_batch_with_the_reason(runtime):
    runtime.models.engine.boom = 0.9
    dark = submit(runtime, [png_bytes(32, i) for i in range(4)])  # one batch of BATCH_SIZE
    bright = submit(runtime, [white_png()])  # the next batch: it breaks the engine
    drain(runtime)
    (broken,) = scans_of(runtime, bright)
    assert broken.status == ScanStatus.FAILED
    assert broken.error == (
        "classification failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    with runtime.session_factory() as session:
        assert summarise_job(session, dark).status == "succeeded"
        assert session.query(Scan).filter(Scan.status == ScanStatus.RUNNING).count() == 0


def test_a_stopping_worker_claims_nothing_and_gives_its_leases_back(runtime):
    job = submit(runtime, [png_bytes(32, i) for i in range(8)])
    from db.scans import claim_next

    with runtime.session_factory.begin() as session:  # leased, not begun
        claim_next(session, runtime.owner, 4, 15)
    runtime.stop_taking_work()
    assert drain(runtime).claimed == 0
    assert runtime.release() == 4
    assert [s.status for s in scans_of(runtime, job)] == [ScanStatus.QUEUED] * 8


def test_the_heartbeat_renews_the_leases_of_a_busy_worker(database_url, tmp_path):
    import time

    from db.scans import claim_next

    settings = load_settings(
        {
            "DATABASE_URL": database_url,
            "BLOB_DIR": str(tmp_path / "b"),
            "LEASE_SECONDS": "2",
            "SWEEP_INTERVAL": "1",
        }
    )
    sessions = make_session_factory(make_engine(database_url))
    runtime = WorkerRuntime(
        settings=settings,
        session_factory=sessions,
        blobs=FileBlobStore(settings.blob_dir),
        models=Models(Engine()),
        decode_pool=ThreadPoolExecutor(1),
        batcher=DynamicBatcher(predict_items, 4, 0.01).start(),
        owner="busy/1",
        claim_slots=threading.BoundedSemaphore(2),
        send_wakeups=NoWakeups(),
    )
    job = submit(runtime, [png_bytes(32, 1)])
    with sessions.begin() as session:  # a long batch: leased, no result for a while
        claim_next(session, runtime.owner, 4, settings.lease_seconds)
    runtime.start_loops()  # heartbeat every second, sweep every second
    try:
        time.sleep(3 * settings.lease_seconds)
        (scan,) = scans_of(runtime, job)
        assert (scan.status, scan.lease_owner, scan.attempts) == (
            ScanStatus.RUNNING,
            "busy/1",
            1,
        )  # never expired, never taken back
    finally:
        runtime.close()
    (scan,) = scans_of(runtime, job)
    assert scan.status == ScanStatus.QUEUED and scan.attempts == 0  # given back on close


def test_start_up_objects_are_frozen_after_the_garbage_is_collected():
    import gc
    import weakref

    from worker.runtime import freeze_long_lived_objects

    class Node:
        pass

    kept, garbage = Node(), Node()
    garbage.self = garbage  # a cycle: only a collection frees it
    dead = weakref.ref(garbage)
    del garbage
    try:
        frozen = freeze_long_lived_objects()
        assert dead() is None  # collected before the freeze, not kept for ever
        assert frozen == gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # left out of collections
    finally:
        gc.unfreeze()
