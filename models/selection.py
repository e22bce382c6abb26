"""Pick, build and vet the engine a worker serves a model with.

``auto`` is TensorFlow on a GPU and OpenVINO on a CPU. A non-reference engine or a
reduced precision serves only after it matches the TensorFlow fp32 reference on the
calibration batch; otherwise the reference serves and the log says why.
"""
from __future__ import annotations

import logging
from pathlib import Path

from models.engine import Engine, TensorFlowEngine, gpu_names
from models.loader import LoadedModel
from models.parity import check_parity

log = logging.getLogger(__name__)


def resolve_engine_kind(requested: str, gpus: list[str]) -> str:
    """``auto`` → ``tensorflow`` with a GPU, ``openvino`` without; other names pass through."""
    if requested == "auto":
        return "tensorflow" if gpus else "openvino"
    return requested


def reference_engine(model: LoadedModel, batch_size: int) -> TensorFlowEngine:
    """The TensorFlow fp32 engine, warm."""
    engine = TensorFlowEngine(model, batch_size=batch_size)
    engine.warm_up()
    return engine


def build_engine(model: LoadedModel, kind: str, precision: str, batch_size: int,
                 cache_dir: Path, reference: TensorFlowEngine) -> Engine:
    """The warm engine to serve ``model`` with: ``kind`` at ``precision`` if it passes parity.

    Args:
        kind: ``auto``, ``tensorflow`` or ``openvino``.
        precision: ``fp32``, ``bf16`` or ``fp16``; the TensorFlow engine computes in fp32 only.
        reference: the model's TensorFlow fp32 engine, served when the candidate fails.
    """
    kind = resolve_engine_kind(kind, gpu_names())
    if kind == "tensorflow":
        if precision != "fp32":
            log.warning("the TensorFlow engine computes in fp32 only; %s requested", precision)
        return reference
    try:
        from models.openvino_engine import OpenVINOEngine, supported_precision

        candidate = OpenVINOEngine(model, supported_precision(precision), batch_size, cache_dir)
        candidate.warm_up()
    except Exception as exc:  # conversion and compilation fail in many ways; the reference serves
        log.exception("OpenVINO cannot serve %s (%s); serving TensorFlow fp32", model.info.name, exc)
        return reference
    report = check_parity(reference, candidate)
    if not report.passed:
        log.warning("OpenVINO %s fails the parity check for %s: %s; serving TensorFlow fp32",
                    candidate.precision, model.info.name, report.describe())
        return reference
    log.info("OpenVINO %s passes the parity check for %s: %s", candidate.precision,
             model.info.name, report.describe())
    return candidate
