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


def test_openvino_fp32_matches_the_reference_and_is_cached_by_sha256(
    tiny, reference, tmp_path, monkeypatch
):
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


def test_openvino_batches_from_two_threads_at_once_each_get_their_own_results(
    tiny, reference, tmp_path
):
    """The batcher hands the engine its next batch while one runs: both come back whole,
    each with its own images' probabilities, and the request threads end with the engine."""
    import gc
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from models.selection import build_engine

    before = set(threading.enumerate())
    engine = build_engine(tiny, "openvino", "fp32", 8, tmp_path, reference)
    assert engine.concurrent_batches == 2
    threads = [
        t for t in set(threading.enumerate()) - before if t.name.startswith("openvino-fp32-")
    ]
    assert len(threads) == engine.requests
    batch = calibration_batch(tiny.info.input_size, count=24)
    batches = [batch[i : i + 8] for i in range(0, 24, 8)] * 4
    expected = reference.predict(batch)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(engine.predict, batches))
    for i, result in enumerate(results):
        assert np.abs(result - expected[(i % 3) * 8 : (i % 3) * 8 + 8]).max() <= 1e-4

    assert all(thread.is_alive() for thread in threads)
    del engine, results
    gc.collect()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)


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


def test_an_engine_failing_its_gate_is_not_served(tiny, reference, tmp_path, monkeypatch, caplog):
    from models import openvino_engine
    from models.selection import build_engine

    class Drifting(openvino_engine.OpenVINOEngine):
        def predict(self, batch):
            return np.clip(super().predict(batch) + 0.02, 0, 1)

    monkeypatch.setattr(openvino_engine, "OpenVINOEngine", Drifting)
    with caplog.at_level(logging.WARNING):
        engine = build_engine(tiny, "openvino", "bf16", 8, tmp_path, reference)
    assert engine is reference
    assert "fails the accuracy gate" in caplog.text and "serving TensorFlow fp32" in caplog.text


def test_the_tensorflow_engine_serves_fp32_whatever_is_asked(tiny, reference, tmp_path):
    from models.selection import build_engine

    engine = build_engine(tiny, "tensorflow", "bf16", 8, tmp_path, reference)
    assert engine is reference and engine.precision == "fp32"


@pytest.mark.parametrize(
    "requested, gpus, kind",
    [
        ("auto", [], "openvino"),
        ("auto", ["/physical_device:GPU:0"], "tensorflow"),
        ("tensorflow", [], "tensorflow"),
        ("openvino", ["/physical_device:GPU:0"], "openvino"),
    ],
)
def test_auto_is_tensorflow_on_a_gpu_and_openvino_on_a_cpu(requested, gpus, kind):
    assert resolve_engine_kind(requested, gpus) == kind


@pytest.mark.parametrize(
    "candidate, precision, passed",
    [
        ([0.11, 0.70, 0.40], "fp32", False),  # 1e-2 off: too far for fp32
        ([0.10004, 0.70, 0.40], "fp32", True),
        ([0.105, 0.695, 0.40], "bf16", True),
        ([0.10, 0.70, 0.52], "fp16", False),  # 0.12 off and a label flip
        ([0.10, 0.70, np.nan], "bf16", False),
        ([0.115, 0.685, 0.41], "int8", True),  # int8 may move P by 0.02
        ([0.125, 0.70, 0.40], "int8", False),  # 0.025 off
    ],
)
def test_the_parity_rule(candidate, precision, passed):
    report = compare(np.array([0.10, 0.70, 0.40]), np.array(candidate), precision)
    assert report.passed is passed, report.describe()


def test_a_label_flip_fails_even_within_the_tolerance():
    report = compare(np.array([0.499, 0.2]), np.array([0.501, 0.2]), "bf16")
    assert report.label_flips == 1 and not report.passed


def test_the_calibration_batch_is_fixed():
    first, second = calibration_batch((32, 32)), calibration_batch((32, 32))
    assert first.shape == (16, 32, 32, 3) and first.dtype == np.float32
    assert np.array_equal(first, second) and first.min() >= 0 and first.max() <= 1


@pytest.fixture(scope="module")
def confident(tmp_path_factory):
    """A tiny model whose P(COVID) stays well away from 0.5, so int8 can pass its gate."""
    from models.loader import load_model_file
    from models.selection import reference_engine
    from tests.models import save_tiny_h5

    model = load_model_file(
        save_tiny_h5(tmp_path_factory.mktemp("confident") / "confident.h5", bias_shift=1.0)
    )
    return model, reference_engine(model, batch_size=8)


def test_int8_is_quantized_once_gated_and_cached_by_model_and_calibration(
    confident, tmp_path, monkeypatch
):
    import nncf

    from models.calibration import default_calibration
    from models.openvino_engine import converted_model_path
    from models.selection import EngineBuilder

    tiny, reference = confident
    calibration = default_calibration(tiny.info.input_size)
    builder = EngineBuilder(tiny, "openvino", 8, tmp_path, reference, calibration)
    choice = builder.build("int8")
    assert (choice.engine.name, choice.engine.precision) == ("openvino", "int8"), choice.note
    assert choice.gate.passed and set(choice.gate.parts) == {"calibration", "held_out"}
    assert choice.gate.parts["held_out"].count == len(calibration.held_out) == 32
    assert choice.gate.calibration["generated"] is True
    batch = calibration_batch(tiny.info.input_size, count=11)
    assert np.abs(choice.engine.predict(batch) - reference.predict(batch)).max() <= 0.02
    cached = converted_model_path(tmp_path, tiny.info.sha256, f"-int8-{calibration.sha256[:16]}")
    assert cached.exists()

    def no_quantization(*_args, **_kwargs):
        raise AssertionError("quantized again instead of reading the cache")

    monkeypatch.setattr(nncf, "quantize", no_quantization)
    again = EngineBuilder(tiny, "openvino", 8, tmp_path, reference, calibration).build("int8")
    assert again.engine.precision == "int8"


def test_an_int8_engine_whose_recorded_auc_check_failed_is_not_served(confident, tmp_path):
    from models.calibration import default_calibration
    from models.selection import EngineBuilder

    tiny, reference = confident
    failed_auc = {"int8": {"fp32": 0.91, "candidate": 0.89, "limit": 0.005, "passed": False}}
    choice = EngineBuilder(
        tiny,
        "openvino",
        8,
        tmp_path,
        reference,
        default_calibration(tiny.info.input_size),
        failed_auc,
    ).build("int8")
    assert choice.engine is reference and not choice.gate.passed
    assert "failed its accuracy gate" in choice.note
    assert "ROC AUC 0.8900 vs fp32 0.9100" in choice.gate.describe()


class FixedSpeed:
    """An engine whose speed is given: ``auto``'s choice is tested on numbers, not timing."""

    name = "openvino"

    def __init__(self, precision, speed):
        self.precision, self.speed = precision, speed


@pytest.mark.parametrize(
    "speeds, passed, chosen",
    [
        ({"fp32": 30, "bf16": 18, "int8": 95}, {"bf16", "int8"}, "int8"),
        ({"fp32": 30, "bf16": 18, "int8": 95}, {"bf16"}, "fp32"),  # int8 failed: bf16 is slower
        ({"fp32": 30, "bf16": 80, "int8": 95}, {"bf16"}, "bf16"),  # a CPU with AMX
    ],
)
def test_auto_serves_the_fastest_engine_that_passed_its_gate(
    tiny, reference, tmp_path, monkeypatch, speeds, passed, chosen
):
    from models import selection
    from models.calibration import default_calibration

    fp32 = FixedSpeed("fp32", speeds["fp32"])
    choices = [selection.Choice("fp32", fp32, "passed")]
    for precision in ("bf16", "int8"):
        engine = FixedSpeed(precision, speeds[precision]) if precision in passed else fp32
        choices.append(selection.Choice(precision, engine, "gate"))
    monkeypatch.setattr(selection, "measure_images_per_second", lambda engine, batch: engine.speed)
    builder = selection.EngineBuilder(
        tiny, "openvino", 8, tmp_path, reference, default_calibration(tiny.info.input_size)
    )
    best = builder.fastest(choices)
    assert best.requested == "auto" and best.engine.precision == chosen
    assert {c.requested: c.images_per_second for c in choices}["int8"] == (
        speeds["int8"] if "int8" in passed else speeds["fp32"]
    )
