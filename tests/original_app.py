"""The original single-image app's code path, line for line, as the reference for fidelity.

cv2.imread, BGR→RGB, cv2.resize to the model's input size, divide by 255, Keras 2
``model.predict``, output index 0 = P(COVID).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np


def original_preprocess(path: Path, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    img = cv2.imread(str(path))
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (size[1], size[0]))
    return np.array(img) / 255


def original_probabilities(model_path: Path, paths: Iterable[Path]) -> dict[str, float]:
    """P(COVID) per file name, from the model file loaded with tf-keras as the app did."""
    import tf_keras

    model = tf_keras.models.load_model(str(model_path))
    size = tuple(model.input_shape[1:3])
    return {
        Path(p).name: float(model.predict(original_preprocess(p, size)[None], verbose=0)[0][0])
        for p in paths
    }
