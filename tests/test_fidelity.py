"""Seed fidelity: a Keras 2 ResNet50 H5 served by covidscan gives the original app's P(COVID).

The reference is the original pipeline, line for line: cv2.imread, BGR→RGB,
cv2.resize to 224×224, divide by 255, Keras 2 model.predict, output[0].
"""

import io

import numpy as np
import pytest
from PIL import Image

from devtools.embedded_redis import EmbeddedRedis
from tests.conftest import (
    WorkerProcess,
    authorised,
    create_api_key,
    fresh_database_url,
    wait_for_job,
    worker_env,
)
from tests.images import ct_slice, encode
from tests.original_app import original_preprocess, original_probabilities

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOLERANCE = 1e-4


def sixteen_bit_png(size, seed):
    gray = np.asarray(ct_slice(size, seed, "L")).astype(np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    return buffer.getvalue()


def rgba_png(size, seed):
    image = ct_slice(size, seed, "RGB").convert("RGBA")
    return encode(image, "PNG")


SLICES = {
    "gray_small.png": lambda: encode(ct_slice(64, 1, "L"), "PNG"),
    "gray_large.png": lambda: encode(ct_slice(1024, 2, "L"), "PNG"),
    "rgb_mid.png": lambda: encode(ct_slice(300, 3, "RGB"), "PNG"),
    "rgb_large.jpg": lambda: encode(ct_slice(512, 4, "RGB"), "JPEG"),
    "gray_small.jpg": lambda: encode(ct_slice(100, 5, "L"), "JPEG"),
    "gray_16bit.png": lambda: sixteen_bit_png(256, 6),
    "rgba.png": lambda: rgba_png(200, 7),
    "wide.png": lambda: encode(ct_slice(512, 8, "L").resize((512, 160)), "PNG"),
}


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidelity_slices")
    for name, make in SLICES.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.fixture(scope="module")
def resnet_h5(slice_dir, tmp_path_factory):
    from tests.models import save_resnet_h5

    calibration = np.stack([original_preprocess(slice_dir / n) for n in SLICES]).astype(np.float32)
    return save_resnet_h5(tmp_path_factory.mktemp("resnet") / "resnet_ct.h5", calibration)


@pytest.fixture(scope="module")
def reference(resnet_h5, slice_dir):
    """P(COVID) per file from the original app's code path."""
    return original_probabilities(resnet_h5, [slice_dir / name for name in SLICES])


def test_the_reference_probabilities_are_not_saturated(reference):
    values = np.array(list(reference.values()))
    assert values.min() > 0.001 and values.max() < 0.999 and values.std() > 0.02, values


def test_the_engine_matches_the_original_pipeline_in_process(resnet_h5, slice_dir, reference):
    from db.blobs import FileBlobStore
    from db.scans import Lease
    from models.loader import load_model_file
    from models.selection import reference_engine
    from worker.inference import classify_batch

    engine = reference_engine(load_model_file(resnet_h5), batch_size=4)
    store = FileBlobStore(slice_dir.parent / "fidelity_blobs")
    items = []
    for name in SLICES:
        store.put(f"f/{name}", (slice_dir / name).read_bytes())
        items.append(Lease(name, "f", f"f/{name}", 1))
    outcomes = classify_batch(items, store, engine)
    got = {o.scan_id: o.probability_covid for o in outcomes}
    diffs = {n: abs(got[n] - reference[n]) for n in SLICES}
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_a_different_resize_would_be_caught(resnet_h5, slice_dir, reference):
    """Antialiased resizing (Pillow's default) moves P(COVID) by more than the tolerance."""
    import tf_keras

    model = tf_keras.models.load_model(str(resnet_h5))
    moved = []
    for name in SLICES:
        image = Image.open(slice_dir / name).convert("RGB").resize((224, 224), Image.BILINEAR)
        p = float(model.predict((np.asarray(image) / 255.0)[None], verbose=0)[0][0])
        moved.append(abs(p - reference[name]))
    assert max(moved) > 10 * TOLERANCE, moved


def test_served_through_the_stack_the_h5_gives_the_original_probabilities(
    resnet_h5, slice_dir, reference, tmp_path
):
    from api import create_app

    with EmbeddedRedis(tmp_path / "redis", persist=False) as redis_server:
        config = {
            "DATABASE_URL": fresh_database_url(tmp_path),
            "REDIS_URL": redis_server.url,
            "BLOB_DIR": str(tmp_path / "blobs"),
            "BATCH_SIZE": "4",
            "ENGINE_CACHE_DIR": str(tmp_path / "engine-cache"),
        }
        worker = WorkerProcess(
            worker_env(config, MODEL_PATH=str(resnet_h5)),
            tmp_path / "worker.log",
            name="fidelity@%h",
        )
        try:
            worker.wait_ready()
            client = authorised(
                create_app(config).test_client(), create_api_key(config["DATABASE_URL"])
            )
            files = [(io.BytesIO((slice_dir / n).read_bytes()), n) for n in SLICES]
            job = client.post(
                "/v1/jobs", data={"files": files}, content_type="multipart/form-data"
            ).get_json()
            final = wait_for_job(client, job["id"], timeout=300)
            rows = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
        finally:
            worker.stop()
    assert final["status"] == "succeeded"
    assert final["model"]["name"] == "resnet_ct" and final["model"]["trained"] is True
    diffs = {r["filename"]: abs(r["probability_covid"] - reference[r["filename"]]) for r in rows}
    assert len(diffs) == len(SLICES) and max(diffs.values()) <= TOLERANCE, diffs
    for row in rows:
        assert row["label"] == ("COVID" if reference[row["filename"]] >= 0.5 else "NonCOVID")
