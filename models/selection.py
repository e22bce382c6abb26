"""Pick, build and vet the engines a worker serves a model with.

The engine kind ``auto`` is TensorFlow on a GPU and OpenVINO on a CPU. A non-reference
engine or a reduced precision serves only after it passes its accuracy gate
(:func:`models.parity.check_gate`) against the TensorFlow fp32 reference; otherwise the
next precision serves (int8, bf16, fp16 → fp32) and the reason is kept with the choice.
The precision ``auto`` builds every candidate that passes its gate, times each on a full
batch and serves the fastest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from models.calibration import CalibrationSet
from models.engine import Engine, TensorFlowEngine, gpu_names
from models.loader import LoadedModel
from models.parity import GateReport, ReferenceScores, check_gate

log = logging.getLogger(__name__)

CONCRETE_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TIMING_ROUNDS = 2


@dataclass
class Choice:
    """What serves one requested precision, and why."""

    requested: str
    engine: Engine
    note: str
    gate: Optional[GateReport] = None
    images_per_second: Optional[float] = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "engine": self.engine.name,
            "precision": self.engine.precision,
            "note": self.note,
            "gate": None if self.gate is None else self.gate.as_dict(),
            "images_per_second": self.images_per_second,
        }


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


@dataclass
class EngineBuilder:
    """Builds the engines of one loaded model; the reference and its scores are shared."""

    model: LoadedModel
    kind: str
    batch_size: int
    cache_dir: Path
    reference: TensorFlowEngine
    calibration: CalibrationSet
    recorded_auc: Optional[dict[str, dict[str, Any]]] = None  # by precision, from the report
    _scores: Optional[ReferenceScores] = None

    def scores(self) -> ReferenceScores:
        if self._scores is None:
            self._scores = ReferenceScores(self.reference, self.calibration)
        return self._scores

    def build(self, precision: str) -> Choice:
        """The engine for a concrete precision, gated; the reference when it cannot serve."""
        kind = resolve_engine_kind(self.kind, gpu_names())
        if kind == "tensorflow":
            note = "TensorFlow computes in fp32" + (
                "" if precision == "fp32" else f"; {precision} is not offered on it"
            )
            return Choice(precision, self.reference, note)
        try:
            from models.openvino_engine import OpenVINOEngine, supported_precision

            actual = supported_precision(precision)
            if actual != precision:
                return Choice(
                    precision,
                    self.reference,
                    f"this CPU has no native {precision}; serving TensorFlow fp32",
                )
            candidate = OpenVINOEngine(
                self.model, precision, self.batch_size, self.cache_dir, calibration=self.calibration
            )
            candidate.warm_up()
        except Exception as exc:  # conversion, quantization and compilation fail in many ways
            log.exception("OpenVINO %s cannot serve %s", precision, self.model.info.name)
            return Choice(
                precision,
                self.reference,
                f"OpenVINO {precision} could not be built ({exc}); serving TensorFlow fp32",
            )
        gate = check_gate(self.scores(), candidate, (self.recorded_auc or {}).get(precision))
        if not gate.passed:
            log.warning(
                "OpenVINO %s fails the accuracy gate for %s: %s; serving TensorFlow fp32",
                precision,
                self.model.info.name,
                gate.describe(),
            )
            return Choice(
                precision,
                self.reference,
                f"OpenVINO {precision} failed its accuracy gate; serving TensorFlow fp32",
                gate,
            )
        log.info(
            "OpenVINO %s passes the accuracy gate for %s: %s",
            candidate.precision,
            self.model.info.name,
            gate.describe(),
        )
        return Choice(precision, candidate, "passed its accuracy gate", gate)

    def fastest(self, choices: list[Choice]) -> Choice:
        """Time each distinct engine on a full batch; the fastest serves ``auto``."""
        batch = np.resize(
            self.calibration.calibration, (self.batch_size, *self.calibration.calibration.shape[1:])
        )
        timed: dict[int, float] = {}
        for choice in choices:
            key = id(choice.engine)
            if key not in timed:
                timed[key] = measure_images_per_second(choice.engine, batch)
            choice.images_per_second = round(timed[key], 2)
        best = max(choices, key=lambda c: (c.images_per_second, c.engine is self.reference))
        log.info(
            "auto serves %s with %s/%s: %s",
            self.model.info.name,
            best.engine.name,
            best.engine.precision,
            ", ".join(f"{c.requested} {c.images_per_second}/s" for c in choices),
        )
        return Choice(
            "auto",
            best.engine,
            f"fastest of the engines that passed their gates ({best.requested})",
            best.gate,
            best.images_per_second,
        )


def measure_images_per_second(
    engine: Engine, batch: np.ndarray, rounds: int = TIMING_ROUNDS
) -> float:
    engine.predict(batch)  # warm at this batch size
    started = time.perf_counter()
    for _ in range(rounds):
        engine.predict(batch)
    return rounds * len(batch) / (time.perf_counter() - started)


def build_engine(
    model: LoadedModel,
    kind: str,
    precision: str,
    batch_size: int,
    cache_dir: Path,
    reference: TensorFlowEngine,
    calibration: Optional[CalibrationSet] = None,
) -> Engine:
    """The warm engine to serve ``model`` with at a concrete ``precision`` (see EngineBuilder)."""
    from models.calibration import default_calibration

    builder = EngineBuilder(
        model,
        kind,
        batch_size,
        cache_dir,
        reference,
        calibration or default_calibration(model.info.input_size),
    )
    return builder.build(precision).engine
