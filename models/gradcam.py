"""Grad-CAM: where in a slice the positive class's score came from.

For each slice: the activations ``A`` of the last convolutional layer (the last layer
with a 4-D output before the head, looked for inside a nested base model too), the
gradient of the positive class's score with respect to them, one weight per channel (the
gradient's spatial mean), ``ReLU(Σ_k w_k A_k)``, upsampled bilinearly to the slice and
divided by its maximum. The score is the pre-softmax logit when the head ends in a Dense
layer (its input times its kernel plus its bias), else the output probability; which
one was used is recorded. Runs in fp32 on the Keras model: the reduced-precision engines
give no gradients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from models.loader import LoadedModel

log = logging.getLogger(__name__)

METHOD = "gradcam"
SCORE_LOGIT = "logit"
SCORE_PROBABILITY = "probability"
HEAD_PASSTHROUGH = ("Dropout", "Activation", "Softmax")


class ExplanationUnsupported(ValueError):
    """The model has no layer or graph shape Grad-CAM can use; the message says why."""


@dataclass(frozen=True)
class Heatmap:
    """One slice's Grad-CAM: the normalised map in [0, 1] at the input's size, and P(positive)."""

    cam: np.ndarray
    probability: float
    peak: float  # the map's maximum before normalising; 0 means the map is empty


def _output_rank(layer) -> int:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer called more than once, or never
        return -1
    return len(shape)


def find_target_layer(keras_model: Any) -> tuple[Any, Optional[Any]]:
    """The last layer with a 4-D output before the head, and the nested model holding it.

    Returns:
        ``(layer, container)``: ``container`` is None for a layer of ``keras_model`` itself,
        else the nested model (a ResNet50 base used as one layer) that holds it.

    Raises:
        ExplanationUnsupported: no layer has a 4-D output.
    """
    for layer in reversed(keras_model.layers):
        if hasattr(layer, "layers") and layer.layers:  # a nested model: its last conv block
            for inner in reversed(layer.layers):
                if _output_rank(inner) == 4:
                    return inner, layer
        elif _output_rank(layer) == 4:
            return layer, None
    raise ExplanationUnsupported("the model has no layer with a 4-D (convolutional) output")


def _head_dense(keras_model):
    """The Dense layer whose output the model's output follows by softmax alone, or None."""
    for layer in reversed(keras_model.layers):
        kind = type(layer).__name__
        if kind == "Dense":
            return layer
        if kind not in HEAD_PASSTHROUGH:
            return None
    return None


def _chain(layers, x, dense=None):
    """Apply ``layers`` one after another; also return the input ``dense`` received."""
    dense_input = None
    for layer in layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if layer is dense:
            dense_input = x
        x = layer(x, training=False)
    return x, dense_input


def _split(keras_model, target, container, dense):
    """Two callables: ``features(x) -> A`` and ``head(A) -> (dense input or None, output)``.

    The head is rebuilt from the target layer's output, so gradients are taken through the
    head only (never through the base: one forward pass and a small backward one).

    Raises:
        ExplanationUnsupported: the head reads tensors from before the target layer, or
            layers around a nested base are not a single chain.
    """
    import importlib

    package = type(keras_model).__module__.split(".")[0]  # tf_keras (Keras 2) or keras (3)
    model_cls = importlib.import_module(package).Model
    try:
        if container is None:
            features = model_cls(keras_model.inputs, target.output)
            outputs = [keras_model.output] if dense is None else [dense.input, keras_model.output]
            head_model = model_cls(target.output, outputs)

            def head(conv):
                found = head_model(conv, training=False)
                return (None, found[0]) if dense is None else (found[0], found[1])

            return features, head
        inner_features = model_cls(container.inputs, target.output)
        if target is container.layers[-1]:  # a base without its top: nothing after it
            inner_head = lambda conv, training=False: conv  # noqa: E731
        else:
            inner_head = model_cls(target.output, container.output)
        index = keras_model.layers.index(container)
        before, after = keras_model.layers[:index], keras_model.layers[index + 1 :]
    except (ValueError, KeyError, AttributeError) as exc:
        raise ExplanationUnsupported(
            f"cannot split the model at {target.name} for Grad-CAM: {exc}"
        ) from None

    def nested_features(x):
        x, _ = _chain(before, x)
        return inner_features(x, training=False)

    def nested_head(conv):
        output, dense_input = _chain(after, inner_head(conv, training=False), dense)
        return dense_input, output

    return nested_features, nested_head


class GradCam:
    """Grad-CAM of a loaded model over fixed-size, padded batches (one compiled call)."""

    name = "tensorflow"  # recorded like an engine's: the Keras model, in fp32
    precision = "fp32"

    def __init__(self, model: LoadedModel, batch_size: int = 8) -> None:
        import tensorflow as tf

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.info = model.info
        self.batch_size = batch_size
        keras_model = model.keras_model
        target, container = find_target_layer(keras_model)
        self.layer = target.name if container is None else f"{container.name}/{target.name}"
        dense = _head_dense(keras_model)
        self.score = SCORE_LOGIT if dense is not None else SCORE_PROBABILITY
        height, width = model.info.input_size
        self._input_shape = (height, width, 3)
        features, head = _split(keras_model, target, container, dense)
        positive = model.info.positive_index
        kernel = dense.kernel[:, positive] if dense is not None else None
        bias = dense.bias[positive] if dense is not None and dense.use_bias else 0.0

        def explain(x):
            conv = features(x, training=False) if container is None else features(x)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(conv)
                dense_input, output = head(conv)
                if kernel is not None:
                    flat = tf.reshape(dense_input, (tf.shape(dense_input)[0], -1))
                    score = tf.linalg.matvec(flat, kernel) + bias
                else:
                    score = output[:, positive]
            grads = tape.gradient(score, conv)  # each slice's score depends on its slice only
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1, keepdims=True))
            peak = tf.reduce_max(cam, axis=(1, 2, 3))
            cam = tf.image.resize(cam, (height, width), method="bilinear")[..., 0]
            cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
            return cam, output[:, positive], peak

        self._call = tf.function(
            explain, input_signature=[tf.TensorSpec((batch_size, height, width, 3), tf.float32)]
        )

    def describe(self) -> dict:
        """What every explanation records besides the model: method, layer, class, score."""
        return {
            "method": METHOD,
            "layer": self.layer,
            "class_name": self.info.positive_class,
            "class_index": self.info.positive_index,
            "score": self.score,
        }

    def warm_up(self) -> None:
        self.explain(np.zeros((1, *self._input_shape), dtype=np.float32))

    def explain(self, batch: np.ndarray) -> list[Heatmap]:
        """One :class:`Heatmap` per slice of an ``(N, H, W, 3)`` float32 batch, in order."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self._input_shape:
            raise ValueError(
                f"expected a batch of shape (N, {self._input_shape}), got {batch.shape}"
            )
        found: list[Heatmap] = []
        for start in range(0, batch.shape[0], self.batch_size):
            part = batch[start : start + self.batch_size]
            padded = np.zeros((self.batch_size, *self._input_shape), dtype=np.float32)
            padded[: part.shape[0]] = part
            cams, probabilities, peaks = (np.asarray(t) for t in self._call(padded))
            found.extend(
                Heatmap(cams[i].astype(np.float32), float(probabilities[i]), float(peaks[i]))
                for i in range(part.shape[0])
            )
        return found
