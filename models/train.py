"""Train the original classifier on labelled slices, the way the original notebooks did.

ResNet50 base (frozen unless ``fine_tune_from``) → Flatten → Dropout(0.5) →
Dense(n, softmax); Adam, categorical cross-entropy, batch 32; augmentation of the
training slices (rotation 20°, width and height shift 0.2, horizontal flip);
preprocessing ``seed-v1``. Early stopping on validation loss keeps the best epoch's
weights on disk, so Ctrl-C still leaves a usable model. Uses the Keras 2 API (tf_keras).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import tf_keras

from models.architecture import build_resnet_classifier
from models.dataset import LabelledSlices, Split
from models.preprocess import load_seed_v1
from models.train_config import TrainConfig

log = logging.getLogger(__name__)

AUGMENTATION = {
    "rotation_range": 20,
    "width_shift_range": 0.2,
    "height_shift_range": 0.2,
    "horizontal_flip": True,
}


class TrainingError(RuntimeError):
    """Training cannot start or left nothing usable; the message says why."""


@dataclass
class TrainResult:
    model_path: Path
    history: dict[str, list[float]]
    best_epoch: int
    interrupted: bool
    base_weights: str
    trainable_from: str = field(default="head only (ResNet50 base frozen)")


class SliceBatches(tf_keras.utils.Sequence):
    """Batches of seed-v1 slices with one-hot labels, augmented and shuffled when training."""

    def __init__(
        self, data: LabelledSlices, size: int, batch_size: int, augment: bool = False, seed: int = 0
    ) -> None:
        super().__init__()
        self.data, self.size, self.batch_size = data, (size, size), batch_size
        self.generator = (
            tf_keras.preprocessing.image.ImageDataGenerator(**AUGMENTATION) if augment else None
        )
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(data.paths))
        if augment:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index: int):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.stack(
            [load_seed_v1(self.data.paths[i].read_bytes(), self.size) for i in chosen]
        )
        if self.generator is not None:
            images = np.stack([self.generator.random_transform(image) for image in images])
        labels = tf_keras.utils.to_categorical(self.data.labels[chosen], len(self.data.classes))
        return images.astype(np.float32), labels

    def on_epoch_end(self) -> None:
        if self.generator is not None:
            self.rng.shuffle(self.order)


class KeepBest(tf_keras.callbacks.Callback):
    """Save the weights whenever validation loss improves, atomically: written aside and
    renamed, so Ctrl-C during a save never leaves a half-written best checkpoint."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.best = math.inf

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is None or not loss < self.best:
            return
        self.best = loss
        partial = self.path.with_name("partial-" + self.path.name)  # same suffix, same format
        self.model.save_weights(str(partial))
        os.replace(partial, self.path)


def _trainable_layers(model, fine_tune_from: Optional[str]) -> str:
    """Freeze the ResNet50 base; unfreeze it from layer ``fine_tune_from`` (name or index)."""
    base_layers = model.layers[:-3]  # the head is Flatten, Dropout, Dense
    for layer in base_layers:
        layer.trainable = False
    if fine_tune_from is None:
        return "head only (ResNet50 base frozen)"
    names = [layer.name for layer in base_layers]
    if fine_tune_from in names:
        start = names.index(fine_tune_from)
    elif fine_tune_from.lstrip("-").isdigit() and -len(names) <= int(fine_tune_from) < len(names):
        start = int(fine_tune_from) % len(names)
    else:
        raise TrainingError(
            f"--fine-tune-from {fine_tune_from!r} is neither a ResNet50 layer "
            f"name (e.g. conv5_block1_1_conv) nor an index below {len(names)}"
        )
    for layer in base_layers[start:]:
        layer.trainable = True
    return f"head and base from layer {names[start]} (index {start})"


def _base_weights(path: Optional[Path]) -> str:
    if path is None:
        return "random initialisation: no --imagenet-weights file was given (nothing is downloaded)"
    from models.loader import file_sha256

    return f"ImageNet weights from {path} (sha256 {file_sha256(path)})"


def train(data: LabelledSlices, split: Split, config: TrainConfig, out_dir: Path) -> TrainResult:
    """Fit, keep the best epoch by validation loss, save ``out_dir/model.h5``.

    Raises:
        TrainingError: bad options, or interrupted before any epoch finished.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tf_keras.utils.set_random_seed(config.seed)
    try:
        model = build_resnet_classifier(
            (config.image_size, config.image_size),
            len(data.classes),
            base_weights=str(config.imagenet_weights) if config.imagenet_weights else None,
            seed=config.seed,
        )
    except (ValueError, OSError) as exc:
        raise TrainingError(f"cannot build the ResNet50 base: {exc}") from None
    trainable = _trainable_layers(model, config.fine_tune_from)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    train_batches = SliceBatches(
        data.subset(split.train),
        config.image_size,
        config.batch_size,
        augment=True,
        seed=config.seed,
    )
    val_batches = SliceBatches(data.subset(split.validation), config.image_size, config.batch_size)
    best = out_dir / "best.weights.h5"
    history = tf_keras.callbacks.History()
    callbacks = [
        history,
        KeepBest(best),
        tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
    ]
    interrupted = False
    try:
        model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except KeyboardInterrupt:
        interrupted = True
        log.warning("training interrupted; keeping the best epoch so far")
    if not best.exists():
        raise TrainingError("training stopped before the first epoch finished; nothing to keep")
    model.load_weights(str(best))
    model_path = out_dir / "model.h5"
    model.save(str(model_path), save_format="h5")
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    best_epoch = int(np.argmin(curves["val_loss"])) + 1 if curves.get("val_loss") else 0
    return TrainResult(
        model_path,
        curves,
        best_epoch,
        interrupted,
        _base_weights(config.imagenet_weights),
        trainable,
    )
