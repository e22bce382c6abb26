"""Read Prometheus' text format: parse a scrape, sum the samples of one metric.

For the tests and the benchmark's dashboard, which read the same ``/metrics`` pages that
Prometheus scrapes.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def parse(text: str) -> list[Sample]:
    """Every sample of a scrape as ``(name, labels, value)``."""
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        v
        for n, sample_labels, v in samples
        if n == name and labels.items() <= sample_labels.items()
    )
