"""The checks a loaded model passes before it is registered."""

from __future__ import annotations

import numpy as np

from models.loader import LoadedModel, ModelLoadError
from models.selection import reference_engine


def check_warm_up(loaded: LoadedModel, where: str) -> None:
    """Build the reference engine and predict on one blank slice.

    Raises:
        ModelLoadError: the prediction fails or is not finite (``where`` names the file).
    """
    engine = reference_engine(loaded, batch_size=1)
    try:
        probability = engine.predict(np.zeros((1, *loaded.info.input_size, 3), dtype=np.float32))
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{where}: the warm-up prediction failed: {exc}") from exc
    if not np.all(np.isfinite(probability)):
        raise ModelLoadError(f"{where}: the warm-up prediction is not finite")
