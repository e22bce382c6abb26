"""In-process measurements for the benchmark: engines on preprocessed tensors, decoding.

They run while the stack is idle, right before the end-to-end case they are compared
with, so both see the same load on the shared cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np


def decode_cost(pngs: Sequence[bytes], size: tuple[int, int], rounds: int = 3) -> dict[str, float]:
    """Seconds per scan to decode and preprocess: on one thread, and with the worker's pool.

    The best of ``rounds``: the cost of the work itself, not of what else ran meanwhile
    (the limit it makes is an upper bound)."""
    from models.preprocess import load_seed_v1

    threads = os.cpu_count() or 2
    single = pooled = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for data in pngs:
            load_seed_v1(data, size)
        single = min(single, (time.perf_counter() - started) / len(pngs))
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(lambda data: load_seed_v1(data, size), pngs))
            pooled = min(pooled, (time.perf_counter() - started) / len(pngs))
    return {"single_thread_s_per_scan": single, "pool_s_per_scan": pooled, "pool_threads": threads}


def throughput(predict, batch: np.ndarray, min_seconds: float = 3.0, callers: int = 1) -> float:
    """Images per second of ``predict`` on ``batch``, after one untimed call, over ≥ min_seconds.

    ``callers`` threads call it at once, as the worker's batcher does for an engine that
    takes its next batch while one runs (``concurrent_batches``)."""
    predict(batch)
    started = time.perf_counter()

    def call() -> int:
        calls = 0
        while calls < 2 or time.perf_counter() - started < min_seconds:
            predict(batch)
            calls += 1
        return calls

    with ThreadPoolExecutor(callers) as pool:
        calls = sum(pool.map(lambda _: call(), range(callers)))
    return calls * len(batch) / (time.perf_counter() - started)


def tensor_batch(pngs: Sequence[bytes], count: int, size: tuple[int, int]) -> np.ndarray:
    from models.preprocess import load_seed_v1

    return np.stack([load_seed_v1(pngs[i % len(pngs)], size) for i in range(count)])


class EngineBench:
    """The model in this process: the model.predict fp32 baseline, the TensorFlow reference,
    and per precision the engine the worker would serve, its parity and its raw speed."""

    def __init__(
        self,
        model_path: Optional[Path],
        engine_kind: str,
        batch_size: int,
        cache_dir: Path,
        pngs: Sequence[bytes],
    ) -> None:
        from models.calibration import default_calibration
        from models.loader import build_untrained, load_model_file
        from models.selection import EngineBuilder, reference_engine

        self.model = load_model_file(model_path) if model_path else build_untrained()
        self.batch_size = batch_size
        self.pngs = pngs[:128]
        self.batch = tensor_batch(pngs, batch_size, self.model.info.input_size)
        self.reference = reference_engine(self.model, batch_size)
        self.builder = EngineBuilder(
            self.model,
            engine_kind,
            batch_size,
            cache_dir,
            self.reference,
            default_calibration(self.model.info.input_size),
        )

    def baseline(self) -> dict[str, Any]:
        keras_model = self.model.keras_model
        info = self.model.info
        return {
            "model": {"name": info.name, "version": info.version, "trained": info.trained},
            "model_predict_fp32_images_per_s": throughput(
                lambda b: keras_model.predict(b, batch_size=self.batch_size, verbose=0), self.batch
            ),
            "tensorflow_fp32_images_per_s": throughput(self.reference.predict, self.batch),
        }

    def measure(self, precision: str) -> dict[str, Any]:
        """The engine a worker would serve ``precision`` with, its gate and its raw speed."""
        from models.selection import CONCRETE_PRECISIONS

        if precision == "auto":
            choice = self.builder.fastest([self.builder.build(p) for p in CONCRETE_PRECISIONS])
        else:
            choice = self.builder.build(precision)
        return {
            "engine": choice.engine.name,
            "precision": choice.engine.precision,
            "note": choice.note,
            "gate": None if choice.gate is None else choice.gate.as_dict(),
            "images_per_s": throughput(
                choice.engine.predict,
                self.batch,
                callers=getattr(choice.engine, "concurrent_batches", 1),
            ),
            "decode": decode_cost(self.pngs, self.model.info.input_size),
        }


def cpu_flags() -> dict[str, Any]:
    """The CPU model and the flags that decide which precisions are fast here."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = (
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_bf16",
        "amx_int8",
        "amx_tile",
    )
    return {
        "model": model,
        "cpus": os.cpu_count(),
        "flags": [flag for flag in wanted if flag in flags],
    }
