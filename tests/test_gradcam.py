"""Grad-CAM on a model trained here: the map must point at what decides the class."""

from __future__ import annotations

import io

import numpy as np
import pytest

from models.gradcam import GradCam, find_target_layer
from models.heatmap_image import colormap_lut, render
from models.loader import build_untrained, load_model_file
from models.synthetic import blob_slices, save_blob_model

RADIUS = 5
CELL = 8  # the last conv layer's cell, in pixels of the 64×64 slice


@pytest.fixture(scope="module")
def blob_model(tmp_path_factory):
    images, labels, _ = blob_slices(320, radius=RADIUS, seed=0)
    path = save_blob_model(tmp_path_factory.mktemp("blob") / "blob.h5", images, labels)
    return load_model_file(path)


def _peak_hits(cams: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Whether each map's maximum lies within the disc, give or take one conv cell."""
    hits = []
    for cam, centre in zip(cams, centres):
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        hits.append(np.hypot(peak[0] - centre[0], peak[1] - centre[1]) <= RADIUS + CELL / 2)
    return np.array(hits)


def test_heatmap_peak_falls_inside_the_deciding_blob(blob_model):
    images, labels, centres = blob_slices(80, radius=RADIUS, seed=1000)
    explainer = GradCam(blob_model, batch_size=16)
    heatmaps = explainer.explain(images)
    positives = np.flatnonzero(labels == 1)
    probabilities = np.array([h.probability for h in heatmaps])
    assert (probabilities[positives] > 0.5).mean() >= 0.9, "the model did not learn the blob"
    cams = np.stack([heatmaps[i].cam for i in positives])
    assert cams.shape == (len(positives), 64, 64)
    assert np.all((cams >= 0) & (cams <= 1)) and np.allclose(cams.max(axis=(1, 2)), 1)
    hits = _peak_hits(cams, centres[positives])
    # The same maps against other slices' discs: what a map unrelated to the slice scores.
    shuffled = _peak_hits(np.roll(cams, 7, axis=0), centres[positives])
    assert hits.mean() >= 0.8, f"peak inside the blob for only {hits.mean():.0%} of positives"
    assert shuffled.mean() <= 0.3, "the check cannot tell a map from an unrelated one"


def test_the_layer_class_and_score_are_recorded(blob_model):
    described = GradCam(blob_model, batch_size=2).describe()
    assert described == {
        "method": "gradcam",
        "layer": "max_pooling2d_2",
        "class_name": "COVID",
        "class_index": 0,
        "score": "logit",
    }


def test_last_conv_block_of_the_original_resnet50():
    layer, container = find_target_layer(build_untrained().keras_model)
    assert (layer.name, container) == ("conv5_block3_out", None)


def test_nested_base_model_is_looked_into(blob_model):
    import tf_keras

    base = tf_keras.Model(
        blob_model.keras_model.inputs, blob_model.keras_model.layers[5].output, name="base"
    )
    inputs = tf_keras.Input((64, 64, 3))
    x = tf_keras.layers.Flatten()(base(inputs))
    outputs = tf_keras.layers.Dense(2, activation="softmax")(x)
    nested = type(blob_model)(info=blob_model.info, keras_model=tf_keras.Model(inputs, outputs))
    explainer = GradCam(nested, batch_size=2)
    assert explainer.layer == "base/" + blob_model.keras_model.layers[5].name
    heatmaps = explainer.explain(blob_slices(3, seed=5)[0])
    assert len(heatmaps) == 3 and all(h.cam.shape == (64, 64) for h in heatmaps)


def test_render_gives_pngs_and_the_raw_map():
    from PIL import Image

    cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    images = render(np.full((64, 64, 3), 0.5, dtype=np.float32), cam, note="UNTRAINED")
    overlay = Image.open(io.BytesIO(images.overlay_png))
    assert overlay.format == "PNG" and overlay.height == 256 and overlay.width > 256
    heatmap = np.asarray(Image.open(io.BytesIO(images.heatmap_png)).convert("RGB"))
    lut = colormap_lut()
    assert (heatmap[0, 0] == lut[0]).all() and (heatmap[-1, -1] == lut[255]).all()
    assert np.allclose(np.load(io.BytesIO(images.map_npy)), cam, atol=1e-3)
