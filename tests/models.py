"""Small and full-size Keras 2 (tf-keras) HDF5 models made the way the original notebook did."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_tiny_h5(path: Path, input_size: int = 32, seed: int = 7, bias_shift: float = 0.0) -> Path:
    """A small CNN with the original head (Flatten, Dropout, Dense(2, softmax)) saved as H5.

    Its probabilities sit near 0.5; ``bias_shift`` moves the head's logits apart so they do
    not (a model whose labels a rounding error cannot flip).
    """
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((input_size, input_size, 3))
    x = tf_keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = tf_keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = tf_keras.layers.Flatten()(x)
    x = tf_keras.layers.Dropout(0.5)(x)
    outputs = tf_keras.layers.Dense(2, activation="softmax")(x)
    model = tf_keras.Model(inputs, outputs)
    if bias_shift:
        kernel, bias = model.layers[-1].get_weights()
        model.layers[-1].set_weights(
            [kernel, bias + np.array([bias_shift, -bias_shift], dtype=bias.dtype)]
        )
    model.save(str(path), save_format="h5")
    return path


def save_resnet_h5(path: Path, calibration: np.ndarray, seed: int = 11) -> Path:
    """The original ResNet50 classifier as a Keras 2 H5, with random weights.

    The Dense head is rescaled on ``calibration`` (preprocessed slices) so that the
    probabilities spread over (0, 1) instead of saturating: a fidelity test on
    saturated outputs could not fail.
    """
    import tf_keras

    from models.architecture import build_resnet_classifier

    model = build_resnet_classifier((224, 224), 2, seed=seed)
    features = tf_keras.Model(model.input, model.layers[-3].output).predict(calibration, verbose=0)
    rng = np.random.default_rng(seed)
    centred = features - features.mean(axis=0)
    direction = rng.normal(size=features.shape[1]).astype(np.float32)
    logits = centred @ direction
    scale = 2.0 / (logits.std() + 1e-12)
    kernel = np.stack([direction * scale / 2, -direction * scale / 2], axis=1)
    bias_shift = -(features.mean(axis=0) @ direction) * scale / 2
    model.layers[-1].set_weights(
        [kernel.astype(np.float32), np.array([bias_shift, -bias_shift], dtype=np.float32)]
    )
    model.save(str(path), save_format="h5")
    return path


def save_calibrated_notop(path: Path, images: np.ndarray, seed: int = 3) -> Path:
    """A stand-in for ImageNet "notop" ResNet50 weights, for tests that cannot download any.

    Random convolutions, with every BatchNormalization's moving statistics set from one
    pass over ``images`` (unlabelled) so the frozen base's features have unit scale, as a
    pretrained base's do. Without this, random features are ~1e-2 and a frozen-base head
    cannot learn in a couple of epochs.
    """
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    base = tf_keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=images.shape[1:]
    )
    for layer in base.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the moving statistics become this batch's
    base(images, training=True)
    base.save_weights(str(path))
    return path
