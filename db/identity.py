"""One value for "which model made this": the model, the engine and the precision.

Results, jobs and refusals all record the same seven facts; they are built only through
the named constructors here and written only through :meth:`ModelIdentity.scan_columns`
and :meth:`ModelIdentity.job_columns`, so no caller maps the fields by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.models import Model

NOT_RUN = "none"


@dataclass(frozen=True)
class ModelIdentity:
    """Names the model, engine, precision and preprocessing that made a result."""

    name: str
    version: str
    sha256: str
    trained: bool
    engine: str
    precision: str
    preprocessing: str

    @classmethod
    def of_engine(cls, engine: Any) -> ModelIdentity:
        """What a warm engine serves (``engine.info`` is a :class:`models.loader.ModelInfo`)."""
        info = engine.info
        return cls(
            info.name,
            info.version,
            info.sha256,
            info.trained,
            engine.name,
            engine.precision,
            info.preprocessing,
        )

    @classmethod
    def of_untrained(cls, info: Any) -> ModelIdentity:
        """The built-in untrained default (its :class:`models.loader.ModelInfo`), not yet run."""
        return cls(info.name, info.version, info.sha256, False, NOT_RUN, NOT_RUN, "seed-v1")

    @classmethod
    def of_registered(cls, model: Model) -> ModelIdentity:
        """A registered model that did not run (it was refused): no engine, no precision."""
        return cls(
            model.name,
            model.version,
            model.sha256,
            model.trained,
            NOT_RUN,
            NOT_RUN,
            model.preprocessing,
        )

    @classmethod
    def unknown(cls) -> ModelIdentity:
        """A model that is no longer registered."""
        return cls("unknown", "unknown", "", False, NOT_RUN, NOT_RUN, "seed-v1")

    def scan_columns(self) -> dict[str, Any]:
        """The :class:`db.models.Scan` columns that record it."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "model_sha256": self.sha256,
            "engine": self.engine,
            "precision": self.precision,
            "preprocessing": self.preprocessing,
        }

    def explanation_columns(self) -> dict[str, Any]:
        """The :class:`db.models.Explanation` columns that record it."""
        return {**self.scan_columns(), "model_trained": self.trained}

    def job_columns(self) -> dict[str, Any]:
        """The :class:`db.models.Job` columns that record the model a job was pinned to."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "model_sha256": self.sha256,
            "model_trained": self.trained,
        }
