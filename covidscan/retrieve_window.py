"""``RETRIEVE_WINDOW``: the hours in which retrievals from a PACS may run (off-peak).

``22:00-06:00`` (local time of the DICOM gateway, start included, end excluded; a window
whose end is before its start runs over midnight). Unset: any time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time

WINDOW = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class RetrieveWindow:
    """From ``start`` to ``end`` every day, in local time."""

    start: time
    end: time

    def is_open(self, moment: datetime) -> bool:
        """Whether ``moment`` (its wall-clock time) is inside the window."""
        now = moment.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end  # over midnight

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(raw: str) -> RetrieveWindow:
    """``HH:MM-HH:MM`` as a window.

    Raises:
        ValueError: another shape, an hour or minute out of range, or an empty window.
    """
    match = WINDOW.match(raw.strip())
    if not match:
        raise ValueError(f"must be HH:MM-HH:MM (e.g. 22:00-06:00), got {raw!r}")
    hours_a, minutes_a, hours_b, minutes_b = (int(part) for part in match.groups())
    if max(hours_a, hours_b) > 23 or max(minutes_a, minutes_b) > 59:
        raise ValueError(f"hours go from 00 to 23 and minutes from 00 to 59, got {raw!r}")
    start, end = time(hours_a, minutes_a), time(hours_b, minutes_b)
    if start == end:
        raise ValueError(
            f"the window starts and ends at the same time: {raw!r} (unset it for any time)"
        )
    return RetrieveWindow(start, end)


def window_open(window: RetrieveWindow | None, moment: datetime | None = None) -> bool:
    """Whether retrievals may run at ``moment`` (default now, local time); None: always."""
    return window is None or window.is_open(moment or datetime.now())
