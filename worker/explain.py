"""Compute leased explanations: decode in the pool, Grad-CAM a batch at a time, write them.

Explanations run on each job's pinned model, on its Keras model in fp32 whatever engine
serves the job's scans (an OpenVINO or int8 engine gives no gradients). A drain takes
them only when no scan waits (:mod:`worker.drain`), so jobs without explanations wait
for at most the batch of explanations in hand.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Optional

from sqlalchemy.exc import OperationalError

from db.explanations import (
    ExplanationLease,
    ExplanationOutcome,
    claim_explanations,
    record_explanations,
)
from db.identity import ModelIdentity
from db.jobs import job_pins
from worker.inference import FrameFiles, load_tensor
from worker.model_cache import ModelUnavailable

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 3
UNTRAINED_NOTE = "UNTRAINED MODEL: means nothing"


def claim(runtime: WorkerRuntime) -> list[ExplanationLease]:
    settings = runtime.settings
    with runtime.session_factory.begin() as session:
        return claim_explanations(
            session, runtime.owner, settings.batch_size, settings.lease_seconds
        )


def explain_leases(runtime: WorkerRuntime, leases: Sequence[ExplanationLease]) -> int:
    """Compute and write leased explanations with their jobs' models; returns rows written."""
    with runtime.session_factory() as session:
        pins = job_pins(session, sorted({lease.job_id for lease in leases}))
    groups: dict[Optional[str], list[ExplanationLease]] = defaultdict(list)
    for lease in leases:
        if lease.job_id in pins:  # a deleted job's explanations are gone with it
            groups[pins[lease.job_id][0]].append(lease)
    written = 0
    for model_id, group in groups.items():
        outcomes, identity = _explain_group(runtime, group, model_id)
        written += _write(runtime, outcomes, group, identity)
        failed = sum(1 for outcome in outcomes if outcome.error)
        log.info(
            "explained %d scans with %s:%s, %d failed",
            len(group),
            identity.name,
            identity.version,
            failed,
        )
    return written


def _explain_group(
    runtime: WorkerRuntime, group: Sequence[ExplanationLease], model_id: Optional[str]
) -> tuple[list[ExplanationOutcome], ModelIdentity]:
    explainer = None
    try:
        explainer = runtime.models.engines_for(model_id).explainer()
        return explain_batch(
            group, runtime.blobs, explainer, runtime.decode_pool
        ), ModelIdentity.of_engine(explainer)
    except ModelUnavailable as exc:
        return [
            ExplanationOutcome(lease.explanation_id, error=str(exc)) for lease in group
        ], exc.identity
    except Exception as exc:
        log.exception("explaining %d scans failed", len(group))
        reason = f"explanation failed: {type(exc).__name__}: {exc}"
        identity = (
            ModelIdentity.of_engine(explainer) if explainer is not None else ModelIdentity.unknown()
        )
        return [ExplanationOutcome(lease.explanation_id, error=reason) for lease in group], identity


def explain_batch(
    items: Sequence[ExplanationLease], blobs, explainer, pool=None
) -> list[ExplanationOutcome]:
    """Decode, Grad-CAM and render; one outcome per item, same length and order."""
    import numpy as np

    from models.heatmap_image import render

    info = explainer.info
    size = info.input_size
    files = FrameFiles(blobs)
    if pool is None:
        loaded = [load_tensor(files, item, info)[0] for item in items]
    else:
        loaded = list(pool.map(lambda item: load_tensor(files, item, info)[0], items))
    outcomes: list[Optional[ExplanationOutcome]] = [
        ExplanationOutcome(item.explanation_id, error=value) if isinstance(value, str) else None
        for item, value in zip(items, loaded)
    ]
    tensors = {i: value for i, value in enumerate(loaded) if isinstance(value, np.ndarray)}
    good = list(tensors)
    if good:
        heatmaps = explainer.explain(np.stack([tensors[i] for i in good]))
        note = None if explainer.info.trained else UNTRAINED_NOTE
        described = explainer.describe()
        for index, heatmap in zip(good, heatmaps):
            images = render(tensors[index], heatmap.cam, note)
            details = {
                "layer": described["layer"],
                "class_name": described["class_name"],
                "class_index": described["class_index"],
                "score": described["score"],
                "probability_covid": heatmap.probability,
                "height": size[0],
                "width": size[1],
            }
            outcomes[index] = ExplanationOutcome(
                items[index].explanation_id, details=details, pictures=asdict(images)
            )
    done = [outcome for outcome in outcomes if outcome is not None]
    if len(done) != len(items):
        raise AssertionError("explain_batch left an item without an outcome")
    return done


def _write(
    runtime: WorkerRuntime,
    outcomes: Sequence[ExplanationOutcome],
    leases: Sequence[ExplanationLease],
    identity: ModelIdentity,
) -> int:
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with runtime.session_factory.begin() as session:
                return record_explanations(session, outcomes, leases, identity, runtime.owner)
        except OperationalError as exc:
            if attempt == WRITE_ATTEMPTS:
                raise
            log.warning("writing %d explanations failed (%s); retrying", len(leases), exc)
            time.sleep(attempt)
    return 0
