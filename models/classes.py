"""Class names: which one is positive (P(COVID)) when the user does not say."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

NEGATED_COVID = re.compile(r"non[\s_-]*covid", re.IGNORECASE)


def looks_positive(name: str) -> bool:
    """True for ``COVID``, ``CT_COVID``, ``covid19``; false for ``non-COVID``, ``CT_NonCOVID``."""
    return "covid" in name.lower() and not NEGATED_COVID.search(name)


def parse_class_list(raw: str) -> tuple[str, ...]:
    """``"COVID,NonCOVID"`` → ``("COVID", "NonCOVID")``; at least two distinct names."""
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(
            f"classes must be two or more distinct names separated by commas, got {raw!r}"
        )
    return names


def positive_index(classes: Sequence[str], positive: Optional[str] = None) -> int:
    """Index of the positive class: ``positive`` when given, else the one that looks like COVID.

    Raises:
        ValueError: ``positive`` is not among the classes, or none or several look positive.
    """
    if positive is not None:
        if positive not in classes:
            raise ValueError(f"positive class {positive!r} is not one of {', '.join(classes)}")
        return list(classes).index(positive)
    candidates = [i for i, name in enumerate(classes) if looks_positive(name)]
    if len(candidates) != 1:
        raise ValueError(
            f"cannot tell the positive class among {', '.join(classes)}: name it with --positive"
        )
    return candidates[0]
