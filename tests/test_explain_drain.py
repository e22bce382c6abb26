"""Explanations in the task body: after every waiting scan, on the job's model, under a
lease; the real Grad-CAM of the untrained default says so. Database, blob store, pool and
batcher are real; the classifying engine is the fake of tests/test_drain.py."""

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import undefer

from db.explanations import claim_explanations, expire_explanation_leases
from db.models import Explanation, Job, ScanStatus
from tests.images import corrupt_png, png_bytes
from tests.test_drain import Engine, runtime_with, submit
from worker.drain import drain

pytestmark = pytest.mark.database


class RecordingExplainer:
    """Grad-CAM's shape: records how many scans were classified when it was first called."""

    name, precision = "tensorflow", "fp32"
    info = Engine.info

    def __init__(self, engine):
        self.engine, self.classified_before = engine, None

    def describe(self):
        return {
            "method": "gradcam",
            "layer": "conv",
            "class_name": "COVID",
            "class_index": 0,
            "score": "logit",
        }

    def explain(self, batch):
        from models.gradcam import Heatmap

        if self.classified_before is None:
            self.classified_before = self.engine.seen
        return [Heatmap(image[..., 0], float(image.mean()), 1.0) for image in batch]


class Models:
    def __init__(self, engine, explainer):
        self.engine, self._explainer = engine, explainer
        self.model = engine  # what unpinned jobs are pinned to: its ``info``

    def engines_for(self, model_id):
        return self

    def get(self, precision=None):
        return self.engine

    def explainer(self):
        return self._explainer


def make_runtime(database_url, tmp_path, explainer_for):
    engine = Engine()
    return runtime_with(database_url, tmp_path, Models(engine, explainer_for(engine)))


def explanations(runtime, job_id):
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                select(Explanation)
                .where(Explanation.job_id == job_id)
                .options(undefer(Explanation.overlay_png))
            )
        )


def test_explanations_wait_for_every_scan_and_fail_with_a_failed_scan(database_url, tmp_path):
    runtime = make_runtime(database_url, tmp_path, RecordingExplainer)
    try:
        explained = submit(
            runtime, [png_bytes(32, i) for i in range(5)] + [corrupt_png()], "gradcam"
        )
        plain = submit(runtime, [png_bytes(32, 10 + i) for i in range(6)], None)
        report = drain(runtime, worker="w@host")
        assert (report.succeeded, report.failed, report.explained) == (11, 1, 5)
        # Every scan, of both jobs, was classified before the first explanation ran.
        assert runtime.models.explainer().classified_before == 11
        rows = sorted(explanations(runtime, explained), key=lambda e: e.status.value)
        assert [e.status for e in rows] == [ScanStatus.FAILED] + [ScanStatus.SUCCEEDED] * 5
        assert "no result" in rows[0].error
        good = rows[1]
        assert (good.layer, good.engine, good.precision, good.model_sha256) == (
            "conv",
            "tensorflow",
            "fp32",
            "a" * 64,
        )
        assert good.overlay_png.startswith(b"\x89PNG") and good.lease_owner is None
        assert explanations(runtime, plain) == []
        assert drain(runtime).explained == 0  # a duplicated wake-up finds nothing
    finally:
        runtime.close()


def test_an_expired_explanation_lease_goes_back_to_the_queue(database_url, tmp_path):
    runtime = make_runtime(database_url, tmp_path, RecordingExplainer)
    try:
        job_id = submit(runtime, [png_bytes(32, 1)], "gradcam")
        with runtime.session_factory.begin() as session:  # a worker claims it, then dies
            session.get(Job, job_id).scans[0].status = ScanStatus.SUCCEEDED
            (lease,) = claim_explanations(session, "dead/1", 4, lease_seconds=-1)
        with runtime.session_factory.begin() as session:
            assert expire_explanation_leases(session, max_attempts=3) == 1
        (row,) = explanations(runtime, job_id)
        assert (row.status, row.lease_owner, row.attempts) == (ScanStatus.QUEUED, None, 1)
        assert drain(runtime).explained == 1  # the next wake-up takes it
    finally:
        runtime.close()


def test_the_untrained_default_explains_and_says_it_is_untrained(database_url, tmp_path):
    from models.gradcam import GradCam
    from models.loader import build_untrained

    # The default's architecture and seeded weights, at 64×64 instead of 224×224 (faster).
    runtime = make_runtime(
        database_url, tmp_path, lambda _engine: GradCam(build_untrained((64, 64)), batch_size=1)
    )
    try:
        job_id = submit(runtime, [png_bytes(64, 3)], "gradcam")
        drain(runtime)
        (row,) = explanations(runtime, job_id)
        assert row.status == ScanStatus.SUCCEEDED, row.error
        assert (row.layer, row.model_name, row.model_trained) == (
            "conv5_block3_out",
            "resnet50-untrained",
            False,
        )
        overlay = np.asarray(Image.open(io.BytesIO(row.overlay_png)).convert("RGB"))
        band = overlay[:16, :224].reshape(-1, 3).astype(int)
        red = (band[:, 0] > 150) & (band[:, 1] < 80) & (band[:, 2] < 80)
        assert red.sum() > 50, "the overlay does not carry the untrained warning"
    finally:
        runtime.close()
