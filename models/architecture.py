"""The classifier architecture of the original notebooks, built with the Keras 2 API.

ResNet50 base (``include_top=False``) → Flatten → Dropout(0.5) → Dense(n, softmax).
"""

from __future__ import annotations

from typing import Optional


def build_resnet_classifier(
    input_size: tuple[int, int] = (224, 224),
    n_classes: int = 2,
    base_weights: Optional[str] = None,
    seed: Optional[int] = None,
):
    """Return an uncompiled ``tf_keras`` model of the original shape.

    Args:
        input_size: (height, width) of the input slices.
        n_classes: width of the softmax output.
        base_weights: a local ResNet50 "notop" weights file, or None for random weights.
            Nothing is ever downloaded.
        seed: when given, seeds the random initialisation so the weights are reproducible.
    """
    import tf_keras

    if seed is not None:
        tf_keras.utils.set_random_seed(seed)
    height, width = input_size
    base = tf_keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(height, width, 3)
    )
    if base_weights is not None:
        base.load_weights(base_weights)
    x = tf_keras.layers.Flatten()(base.output)
    x = tf_keras.layers.Dropout(0.5)(x)
    outputs = tf_keras.layers.Dense(n_classes, activation="softmax")(x)
    return tf_keras.Model(inputs=base.input, outputs=outputs)
