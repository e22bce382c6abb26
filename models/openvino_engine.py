"""The OpenVINO engine for CPU hosts: converted once per model, kept busy with async requests.

The Keras model is traced as a ``tf.function`` with a dynamic batch dimension and
converted with ``openvino.convert_model``. The converted model is cached on disk under
the model's SHA-256 (and the OpenVINO version), so a worker restart reads it back
instead of converting again. A batch is split over the compiled model's optimal number
of infer requests, which run in parallel streams. Each request has a thread of its own
that takes the next part from one line as soon as its last is done, so a stream slowed
by other work on its core (decoding, the API) does not idle the others at the end of
every batch: while one batch runs, the next waits in line (``concurrent_batches``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

import numpy as np

from models.calibration import CalibrationSet
from models.loader import LoadedModel

log = logging.getLogger(__name__)

OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CPU_CAPABILITY = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}


def _core():
    import openvino as ov

    return ov.Core()


def supported_precision(precision: str, device: str = "CPU") -> str:
    """``precision`` when the device computes in it natively, else fp32 (with a warning)."""
    if precision == "fp32":
        return precision
    capabilities = _core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    if CPU_CAPABILITY[precision] in capabilities:
        return precision
    log.warning(
        "%s does not support %s (capabilities %s); using fp32",
        device,
        precision,
        ", ".join(capabilities),
    )
    return "fp32"


def converted_model_path(cache_dir: Path, sha256: str, variant: str = "") -> Path:
    import openvino as ov

    version = ov.__version__.split("-")[0]
    return Path(cache_dir) / f"{sha256}-openvino-{version}{variant}.xml"


def _save_atomically(ov_model, path: Path) -> None:
    """Written under a private name, then renamed: the .xml appears only once the .bin is
    whole, so a concurrent or interrupted worker never reads half a model."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.xml")
    ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)
    log.info("cached %s", path)


def convert_cached(model: LoadedModel, cache_dir: Path):
    """The OpenVINO model for ``model``: read from the cache, or converted and cached."""
    import openvino as ov

    path = converted_model_path(cache_dir, model.info.sha256)
    if path.exists():
        log.info("reading the converted model from %s", path)
        return _core().read_model(str(path))
    import tensorflow as tf

    height, width = model.info.input_size
    keras_model = model.keras_model
    traced = tf.function(
        lambda x: keras_model(x, training=False),
        input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32)],
    )
    log.info("converting %s:%s to OpenVINO", model.info.name, model.info.version)
    converted = ov.convert_model(traced.get_concrete_function())
    _save_atomically(converted, path)
    return converted


def quantize_cached(model: LoadedModel, calibration: CalibrationSet, cache_dir: Path):
    """The int8 OpenVINO model: NNCF post-training quantization of the converted model on
    ``calibration.calibration``, cached under the model's and the set's SHA-256."""
    path = converted_model_path(cache_dir, model.info.sha256, f"-int8-{calibration.sha256[:16]}")
    if path.exists():
        log.info("reading the int8 model from %s", path)
        return _core().read_model(str(path))
    import nncf

    samples = calibration.calibration
    log.info(
        "quantizing %s:%s to int8 on %d slices (%s)",
        model.info.name,
        model.info.version,
        len(samples),
        calibration.source,
    )
    quantized = nncf.quantize(
        convert_cached(model, cache_dir),
        nncf.Dataset([samples[i : i + 1] for i in range(len(samples))]),
        subset_size=len(samples),
        preset=nncf.QuantizationPreset.PERFORMANCE,
    )
    _save_atomically(quantized, path)
    return quantized


class OpenVINOEngine:
    """Runs a converted model on the CPU in fp32, bf16 or fp16 with parallel infer requests."""

    name = "openvino"
    # Batches the batcher may hand over at once: one running, the next waiting in line.
    concurrent_batches = 2

    def __init__(
        self,
        model: LoadedModel,
        precision: str,
        batch_size: int,
        cache_dir: Path,
        device: str = "CPU",
        calibration: Optional[CalibrationSet] = None,
    ) -> None:
        """``precision`` ``int8`` quantizes on ``calibration`` (required then)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.info = model.info
        self.batch_size = batch_size
        height, width = model.info.input_size
        self._input_shape = (height, width, 3)
        core = _core()
        core.set_property({"CACHE_DIR": str(Path(cache_dir) / "compiled")})
        if precision == "int8":
            if calibration is None:
                raise ValueError("an int8 engine needs a calibration set")
            # Quantized layers run in int8; the few left in floating point run in f32.
            ov_model, hint = quantize_cached(model, calibration, cache_dir), "f32"
        else:
            ov_model, hint = convert_cached(model, cache_dir), OV_PRECISION[precision]
        self._compiled = core.compile_model(
            ov_model, device, {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT"}
        )
        # What the device settled on, which is what results record.
        actual = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = (
            "int8"
            if precision == "int8"
            else {ov_name: name for name, ov_name in OV_PRECISION.items()}.get(actual, actual)
        )
        self.requests = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # One thread per request, blocked in infer() (which releases the GIL) or on the line:
        # no completion callback has to take the GIL inside OpenVINO's stream threads.
        self._line: queue.SimpleQueue = queue.SimpleQueue()
        requests = [self._compiled.create_infer_request() for _ in range(self.requests)]
        # The first calls into OpenVINO's Python bindings initialise static state (pybind11's
        # NumPy API among it) under the GIL; two threads making them at once can deadlock.
        # So each request runs once here, in this thread, before its own thread starts.
        probe = np.zeros((1, *self._input_shape), dtype=np.float32)
        for request in requests:
            _run_part(request, probe)
        for index, request in enumerate(requests):
            threading.Thread(
                target=_serve_requests,
                args=(request, self._line),
                name=f"openvino-{self.precision}-{index}",
                daemon=True,
            ).start()
        # The threads end when the engine is dropped (an evicted model), not with the process.
        weakref.finalize(self, _stop_serving, self._line, self.requests)
        log.info("OpenVINO %s on %s: %d infer requests", self.precision, device, self.requests)

    def warm_up(self) -> None:
        self.predict(np.zeros((self.batch_size, *self._input_shape), dtype=np.float32))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self._input_shape:
            raise ValueError(
                f"expected a batch of shape (N, {self._input_shape}), got {batch.shape}"
            )
        if batch.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        futures = []
        for part in np.array_split(batch, min(self.requests, batch.shape[0])):
            future: Future = Future()
            self._line.put((part, future))
            futures.append(future)
        output = np.concatenate([future.result() for future in futures])
        return output[:, self.info.positive_index].astype(np.float64)


def _run_part(request, part: np.ndarray) -> np.ndarray:
    request.infer({0: part})
    return request.get_output_tensor(0).data.copy()


def _serve_requests(request, line: queue.SimpleQueue) -> None:
    """Run parts from ``line`` on one infer request until told to stop (None)."""
    while (job := line.get()) is not None:
        part, future = job
        try:
            future.set_result(_run_part(request, part))
        except BaseException as exc:
            future.set_exception(exc)


def _stop_serving(line: queue.SimpleQueue, threads: int) -> None:
    for _ in range(threads):
        line.put(None)
