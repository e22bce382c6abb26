"""Load a classifier from a file the operator supplies, or build the untrained default.

Formats: Keras 2 HDF5 (``.h5``, as the original notebooks saved ``resnet_ct.h5``),
Keras 3 ``.keras`` (loaded with ``safe_mode`` on) and TensorFlow SavedModel
directories. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from models.preprocess import SEED_V1

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("COVID", "NonCOVID")
UNTRAINED_NAME = "resnet50-untrained"
UNTRAINED_SEED = 20200301


class ModelLoadError(RuntimeError):
    """A model file cannot be loaded or does not have the expected shape."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: the identity every result records."""

    name: str
    version: str
    sha256: str
    trained: bool
    format: str
    input_size: tuple[int, int]
    classes: tuple[str, ...] = DEFAULT_CLASSES
    positive_index: int = 0
    preprocessing: str = SEED_V1
    # (width, level) in HU that DICOM slices are windowed with before ``preprocessing``
    dicom_window: tuple[float, float] = (1500.0, -600.0)

    @property
    def positive_class(self) -> str:
        return self.classes[self.positive_index]

    def label_for(self, probability_positive: float) -> str:
        """The positive class at P ≥ 0.5, else the other class (two-class models)."""
        if probability_positive >= 0.5:
            return self.positive_class
        others = [c for i, c in enumerate(self.classes) if i != self.positive_index]
        return others[0] if len(others) == 1 else f"not {self.positive_class}"


@dataclass
class LoadedModel:
    info: ModelInfo
    keras_model: Any = field(repr=False)
    path: Optional[Path] = None  # the file it was loaded from; None for the built-in default


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of every file in a directory (sorted by relative path)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        if path.is_dir():
            digest.update(item.relative_to(path).as_posix().encode() + b"\0")
        with open(item, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelLoadError(f"{path} is a directory without saved_model.pb")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "keras2-h5"
    if suffix == ".keras":
        return "keras3"
    raise ModelLoadError(f"{path}: unsupported model file (expected .h5, .keras or a SavedModel)")


def _load_keras_model(path: Path, fmt: str, trust_code: bool):
    if fmt in ("keras2-h5", "savedmodel"):
        import tf_keras

        return tf_keras.models.load_model(str(path), compile=False)
    import keras

    return keras.saving.load_model(str(path), compile=False, safe_mode=not trust_code)


def _input_size(keras_model, path: Path) -> tuple[int, int]:
    shape = tuple(keras_model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise ModelLoadError(f"{path}: expected an input of shape (None, H, W, 3), got {shape}")
    return int(shape[1]), int(shape[2])


def load_model_file(
    path: Path,
    name: Optional[str] = None,
    version: Optional[str] = None,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    positive_index: int = 0,
    expected_sha256: Optional[str] = None,
    trust_code: bool = False,
) -> LoadedModel:
    """Load a model file and describe it.

    A file that can run code when loaded (Lambda layers, custom objects, ops outside the
    allowlist: see :mod:`models.trust`) is refused before it is loaded, unless
    ``trust_code``.

    Args:
        path: the .h5 / .keras file or SavedModel directory.
        name: defaults to the file name without its extension.
        version: defaults to the first 12 hex digits of the file's SHA-256.
        classes: class names in output order; ``positive_index`` names P(COVID).
        expected_sha256: refuse the file when its hash differs.
        trust_code: load a file whose layers or ops run code (the operator vouches for it).

    Raises:
        ModelLoadError: missing, unreadable, tampered, untrusted or wrongly shaped file.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    fmt = detect_format(path)
    sha256 = file_sha256(path)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ModelLoadError(
            f"{path}: SHA-256 {sha256[:12]}… does not match the recorded {expected_sha256[:12]}…;"
            " the file changed since it was registered"
        )
    from models.trust import UntrustedModelError, check_trusted

    try:
        check_trusted(path, fmt, trust_code)
    except UntrustedModelError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # h5py and protobuf raise many types for unreadable files
        raise ModelLoadError(f"{path}: cannot load as {fmt}: {exc}") from exc
    try:
        keras_model = _load_keras_model(path, fmt, trust_code)
    except Exception as exc:  # Keras raises many types for unreadable files
        raise ModelLoadError(f"{path}: cannot load as {fmt}: {exc}") from exc
    outputs = keras_model.output_shape
    if outputs[-1] != len(classes):
        raise ModelLoadError(
            f"{path}: the model has {outputs[-1]} outputs but {len(classes)} classes were given"
        )
    default_name = path.stem if path.is_file() else path.name
    info = ModelInfo(
        name=name or default_name,
        version=version or sha256[:12],
        sha256=sha256,
        trained=True,
        format=fmt,
        input_size=_input_size(keras_model, path),
        classes=tuple(classes),
        positive_index=positive_index,
    )
    log.info("loaded model %s:%s (%s, sha256 %s)", info.name, info.version, fmt, sha256[:12])
    return LoadedModel(info=info, keras_model=keras_model, path=path)


def weights_sha256(keras_model) -> str:
    digest = hashlib.sha256()
    for weights in keras_model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def build_untrained(input_size: tuple[int, int] = (224, 224)) -> LoadedModel:
    """The original architecture with fixed-seed random weights: its numbers mean nothing."""
    from models.architecture import build_resnet_classifier

    keras_model = build_resnet_classifier(input_size, len(DEFAULT_CLASSES), seed=UNTRAINED_SEED)
    info = ModelInfo(
        name=UNTRAINED_NAME,
        version=f"seed-{UNTRAINED_SEED}",
        sha256=weights_sha256(keras_model),
        trained=False,
        format="builtin",
        input_size=input_size,
    )
    log.info("built %s (fixed-seed random weights)", UNTRAINED_NAME)
    return LoadedModel(info=info, keras_model=keras_model)
