"""Inference engines: load once, warm up, then ``predict(batch) -> P(positive)``.

The TensorFlow engine is the reference: one compiled call with a fixed batch
shape (short batches are padded), so nothing retraces between batches. Other
engines (:mod:`models.openvino_engine`) are checked against it before they serve
(:mod:`models.selection`).
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from models.loader import LoadedModel, ModelInfo

log = logging.getLogger(__name__)


class Engine(Protocol):
    name: str  # "tensorflow", "openvino": recorded with every result
    precision: str  # "fp32", "bf16" or "fp16": what the engine actually computes in
    batch_size: int
    info: ModelInfo

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Map an ``(N, H, W, 3)`` float32 batch to N probabilities of the positive class.

        A non-finite value is returned as it is; the caller fails that scan alone.
        """
        ...

    def warm_up(self) -> None: ...


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees (none on a CPU host)."""
    import tensorflow as tf

    return [gpu.name for gpu in tf.config.list_physical_devices("GPU")]


def configure_tensorflow_devices() -> list[str]:
    """Turn on GPU memory growth (once, before TensorFlow touches the GPU); return the GPU names."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised: keep going with what we have
            log.warning("could not enable memory growth on %s: %s", gpu.name, exc)
    return [gpu.name for gpu in gpus]


class TensorFlowEngine:
    """Runs the Keras model as one ``tf.function`` over fixed-size, padded batches."""

    name = "tensorflow"
    precision = "fp32"

    def __init__(self, model: LoadedModel, batch_size: int = 32) -> None:
        import tensorflow as tf

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.info = model.info
        self.batch_size = batch_size
        height, width = model.info.input_size
        keras_model = model.keras_model
        self._input_shape = (height, width, 3)
        self._call = tf.function(
            lambda x: keras_model(x, training=False),
            input_signature=[tf.TensorSpec((batch_size, height, width, 3), tf.float32)],
        )

    def warm_up(self) -> None:
        self.predict(np.zeros((1, *self._input_shape), dtype=np.float32))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self._input_shape:
            raise ValueError(
                f"expected a batch of shape (N, {self._input_shape}), got {batch.shape}"
            )
        count = batch.shape[0]
        probabilities = np.empty(count, dtype=np.float64)
        for start in range(0, count, self.batch_size):
            part = batch[start : start + self.batch_size]
            padded = part
            if part.shape[0] < self.batch_size:
                padded = np.zeros((self.batch_size, *self._input_shape), dtype=np.float32)
                padded[: part.shape[0]] = part
            output = np.asarray(self._call(padded))[: part.shape[0]]
            probabilities[start : start + part.shape[0]] = output[:, self.info.positive_index]
        return probabilities
