"""Engines on a real (tiny) model: OpenVINO against the TensorFlow reference, the conversion
cache, the parity rule and the fallbacks."""
import logging

import numpy as np
import pytest

from models.parity import calibration_batch, compare
from models.selection import resolve_engine_kind


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from models.loader import load_model_file

    return load_model_file(tiny_model_path)


@pytest.fixture(scope="module")
def reference(tiny):
    from models.selection import reference_engine

    return reference_engine(tiny, batch_size=8)


def test_openvino_fp32_matches_the_reference_and_is_cached_by_sha256(tiny, reference, tmp_path,
                                                                      monkeypatch):
    import openvino

    from models.openvino_engine import converted_model_path
    from models.selection import build_engine

    engine = build_engine(tiny, "openvino", "fp32", 8, tmp_path, reference)
    assert (engine.name, engine.precision) == ("openvino", "fp32")
    batch = calibration_batch(tiny.info.input_size, count=11)  # not a multiple of anything
    assert np.abs(engine.predict(batch) - reference.predict(batch)).max() <= 1e-4
    assert converted_model_path(tmp_path, tiny.info.sha256).exists()

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    again = build_engine(tiny, "openvino", "fp32", 8, tmp_path, reference)
    assert again.name == "openvino"


def test_bf16_serves_on_this_cpu_within_the_reduced_tolerance(tiny, reference, tmp_path):
    from models.openvino_engine import supported_precision
    from models.selection import build_engine

    engine = build_engine(tiny, "openvino", "bf16", 8, tmp_path, reference)
    assert engine.name == "openvino"
    assert engine.precision == supported_precision("bf16")  # bf16, or fp32 on an older CPU


def test_a_precision_the_cpu_lacks_falls_back_to_fp32_with_a_warning(monkeypatch, caplog):
    from models import openvino_engine

    class OldCpu:
        def get_property(self, device, name):
            return ["FP32", "INT8"]

    monkeypatch.setattr(openvino_engine, "_core", OldCpu)
    with caplog.at_level(logging.WARNING):
        assert openvino_engine.supported_precision("bf16") == "fp32"
    assert "does not support bf16" in caplog.text


def test_an_engine_failing_parity_is_not_served(tiny, reference, tmp_path, monkeypatch, caplog):
    from models import openvino_engine
    from models.selection import build_engine

    class Drifting(openvino_engine.OpenVINOEngine):
        def predict(self, batch):
            return np.clip(super().predict(batch) + 0.02, 0, 1)

    monkeypatch.setattr(openvino_engine, "OpenVINOEngine", Drifting)
    with caplog.at_level(logging.WARNING):
        engine = build_engine(tiny, "openvino", "bf16", 8, tmp_path, reference)
    assert engine is reference
    assert "fails the parity check" in caplog.text and "serving TensorFlow fp32" in caplog.text


def test_the_tensorflow_engine_serves_fp32_whatever_is_asked(tiny, reference, tmp_path):
    from models.selection import build_engine

    engine = build_engine(tiny, "tensorflow", "bf16", 8, tmp_path, reference)
    assert engine is reference and engine.precision == "fp32"


@pytest.mark.parametrize("requested, gpus, kind", [
    ("auto", [], "openvino"), ("auto", ["/physical_device:GPU:0"], "tensorflow"),
    ("tensorflow", [], "tensorflow"), ("openvino", ["/physical_device:GPU:0"], "openvino"),
])
def test_auto_is_tensorflow_on_a_gpu_and_openvino_on_a_cpu(requested, gpus, kind):
    assert resolve_engine_kind(requested, gpus) == kind


@pytest.mark.parametrize("candidate, precision, passed", [
    ([0.11, 0.70, 0.40], "fp32", False),       # 1e-2 off: too far for fp32
    ([0.10004, 0.70, 0.40], "fp32", True),
    ([0.105, 0.695, 0.40], "bf16", True),
    ([0.10, 0.70, 0.52], "fp16", False),       # 0.12 off and a label flip
    ([0.10, 0.70, np.nan], "bf16", False),
])
def test_the_parity_rule(candidate, precision, passed):
    report = compare(np.array([0.10, 0.70, 0.40]), np.array(candidate), precision)
    assert report.passed is passed, report.describe()


def test_a_label_flip_fails_even_within_the_tolerance():
    report = compare(np.array([0.499, 0.2]), np.array([0.501, 0.2]), "bf16")
    assert report.label_flips == 1 and not report.passed


def test_the_calibration_batch_is_fixed():
    first, second = calibration_batch((32, 32)), calibration_batch((32, 32))
    assert first.shape == (16, 32, 32, 3) and first.dtype == np.float32
    assert np.array_equal(first, second) and 0 <= first.min() and first.max() <= 1
