"""How a DICOM series' P(COVID) is made from its slices': the rule's names, parsed once.

``topNpct-mean`` (N from 1 to 100) is the mean of the highest N % of the slices'
probabilities, ``mean`` and ``max`` are what they say. ``SERIES_RULE`` picks one per
deployment (the default :data:`DEFAULT_RULE`); each job records the rule it was submitted
under, and ``db.series`` applies it.
"""

from __future__ import annotations

import re
from typing import Optional

DEFAULT_RULE = "top10pct-mean"
_RULE = re.compile(r"^(?:top(?P<percent>[1-9][0-9]?|100)pct-mean|mean|max)$")


def parse_series_rule(raw: str) -> str:
    """The rule ``raw`` names, in lower case.

    Raises:
        ValueError: not ``topNpct-mean`` with N from 1 to 100, ``mean`` or ``max``.
    """
    text = raw.strip().lower()
    if not _RULE.match(text):
        raise ValueError(
            f"must be topNpct-mean (N from 1 to 100, e.g. top10pct-mean), mean or max, got {raw!r}"
        )
    return text


def top_percent(rule: str) -> Optional[int]:
    """N of a ``topNpct-mean`` rule; None for ``mean`` and ``max``.

    Raises:
        ValueError: an unknown rule.
    """
    match = _RULE.match(rule)
    if match is None:
        raise ValueError(f"unknown series rule {rule!r}")
    return int(match["percent"]) if match["percent"] else None
