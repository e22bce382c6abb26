"""What explanations cost: Grad-CAM per scan against fp32 inference per scan, same run.

In this process, on one batch of preprocessed slices: the TensorFlow fp32 engine, the
Grad-CAM of the same model (a forward pass and the head's backward pass) and rendering
the pictures. Through the stack: one bulk job without explanations and the same slices
with ``explain=gradcam``, timed to the last result and the last explanation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import requests
from sqlalchemy import func, select

from bench.engine import tensor_batch, throughput
from db.models import Explanation, ScanStatus


def in_process(model, batch_size: int, pngs: Sequence[bytes]) -> dict[str, Any]:
    """Seconds per scan of fp32 inference, of Grad-CAM and of rendering, and their ratio."""
    from models.gradcam import GradCam
    from models.heatmap_image import render
    from models.selection import reference_engine

    batch = tensor_batch(pngs, batch_size, model.info.input_size)
    infer = 1.0 / throughput(reference_engine(model, batch_size).predict, batch)
    explainer = GradCam(model, batch_size)
    explain = 1.0 / throughput(explainer.explain, batch)
    heatmaps = explainer.explain(batch)
    started = time.perf_counter()
    for tensor, heatmap in zip(batch, heatmaps):
        render(tensor, heatmap.cam)
    draw = (time.perf_counter() - started) / len(batch)
    return {
        "layer": explainer.layer,
        "score": explainer.score,
        "batch_size": batch_size,
        "infer_fp32_ms_per_scan": 1000 * infer,
        "gradcam_ms_per_scan": 1000 * explain,
        "render_ms_per_scan": 1000 * draw,
        "explanation_over_inference": (explain + draw) / infer,
    }


def explained_at(bench, job_ids: Sequence[str], timeout: float = 1800) -> list[float]:
    """Wait until every explanation of the jobs is done; their finish times (epoch seconds)."""
    ids = list(job_ids)
    waiting = (
        select(func.count())
        .select_from(Explanation)
        .where(Explanation.job_id.in_(ids), Explanation.status.not_in(ScanStatus.terminal()))
    )
    deadline = time.monotonic() + timeout
    while True:
        with bench.db.connect() as conn:
            if conn.scalar(waiting) == 0:
                rows = conn.execute(
                    select(Explanation.finished_at, Explanation.status).where(
                        Explanation.job_id.in_(ids)
                    )
                ).all()
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"explanations not finished after {timeout} s")
        time.sleep(0.1)
    if not rows or any(status != ScanStatus.SUCCEEDED for _, status in rows):
        raise RuntimeError("explanations failed; see var/bench/stack.log")
    return [moment.timestamp() for moment, _ in rows]


def through_the_stack(bench, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """The same bulk job without, then with, explanations (fp32); seconds per scan of each."""

    def submit(explain: bool) -> str:
        parts = [("files", (name, data, "image/png")) for name, data in files]
        data = {"precision": "fp32", **({"explain": "gradcam"} if explain else {})}
        response = requests.post(
            f"{bench.url}/v1/jobs", files=parts, headers=bench.headers, data=data, timeout=600
        )
        response.raise_for_status()
        return response.json()["id"]

    warm = submit(True)  # builds and warms the worker's Grad-CAM; not timed
    bench.finished_at([warm])
    explained_at(bench, [warm])
    cases = {}
    for explain in (False, True):
        started = time.time()
        job_id = submit(explain)
        uploaded = time.time()
        done = max(bench.finished_at([job_id]))
        if explain:
            done = max(done, max(explained_at(bench, [job_id])))
        cases["with" if explain else "without"] = {
            "scans": len(files),
            "upload_s": uploaded - started,
            "after_upload_s_per_scan": (done - uploaded) / len(files),
        }
    without = cases["without"]["after_upload_s_per_scan"]
    extra = cases["with"]["after_upload_s_per_scan"] - without
    return {**cases, "extra_ms_per_scan": 1000 * extra, "extra_over_without": extra / without}


def print_explain(report: dict[str, Any]) -> None:
    local, stack = report["in_process"], report.get("stack")
    print(
        f"\n[explanations] Grad-CAM on {local['layer']} ({local['score']} score), batch "
        f"{local['batch_size']}, in this process:"
    )
    print(
        f"  fp32 inference {local['infer_fp32_ms_per_scan']:.2f} ms/scan; Grad-CAM "
        f"{local['gradcam_ms_per_scan']:.2f} ms/scan + rendering "
        f"{local['render_ms_per_scan']:.2f} ms/scan = "
        f"{local['explanation_over_inference']:.2f}× the inference (goal ≤ 2×)"
    )
    if stack:
        print(
            f"  through the stack, {stack['without']['scans']} scans after upload: "
            f"{1000 * stack['without']['after_upload_s_per_scan']:.1f} ms/scan without, "
            f"{1000 * stack['with']['after_upload_s_per_scan']:.1f} ms/scan with "
            f"explanations: +{stack['extra_ms_per_scan']:.1f} ms/scan "
            f"({stack['extra_over_without']:.2f}× the cost without)"
        )
