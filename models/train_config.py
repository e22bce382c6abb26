"""The training recipe's knobs and their defaults, apart from the training code so that the
``covidscan train`` command can show them without importing TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class TrainConfig:
    """The recipe's knobs; the defaults are the original notebooks'."""

    epochs: int = 20
    image_size: int = 224
    batch_size: int = 32
    val_split: float = 0.2
    seed: int = 42
    fine_tune_from: Optional[str] = None
    imagenet_weights: Optional[Path] = None
    group_regex: Optional[str] = None
    patience: int = 5
