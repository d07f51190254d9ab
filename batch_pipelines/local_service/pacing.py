"""How fast one batch goes: ``instant``, ``realistic``, or slowed by its fault plan's ``row_delay``.

``realistic`` makes every phase visible the way a real provider's batch is: about 2 s validating,
rows at max(20 rows/s, rows/60 s), about 1 s finalizing (and cancelling), so a few hundred rows
take tens of seconds and no batch much over a minute. ``row_delay`` caps the rate further (tests
use it to cancel or expire a batch mid-way). ``instant`` runs as fast as the machine allows.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["SPEEDS", "Pace", "Speed"]

Speed = Literal["instant", "realistic"]
SPEEDS = ("instant", "realistic")

_PHASE_SECONDS = {"validating": 2.0, "finalizing": 1.0, "cancelling": 1.0}
_MIN_RATE = 20.0  # rows/s: a small batch still moves visibly
_MAX_SECONDS = 60.0  # a big batch's rows take about this long


class Pace:
    """The pace of one batch."""

    def __init__(self, *, realistic: bool, row_delay: float) -> None:
        self._realistic = realistic
        self._row_delay = row_delay

    def phase_end(self, since: int | None, phase: str) -> float:
        """When ``phase``, entered at ``since``, may end (0: at once)."""
        if not self._realistic or since is None:
            return 0.0
        return since + _PHASE_SECONDS[phase]

    def due_rows(self, *, total: int, started: float, done: int, now: float, most: int) -> tuple[int, float]:
        """How many rows (at most ``most``) may run now, ``done`` of ``total`` rows after
        ``started``; and, when none may, the time the next one is due."""
        rate = max(_MIN_RATE, total / _MAX_SECONDS) if self._realistic else None
        if self._row_delay:
            rate = min(rate or float("inf"), 1.0 / self._row_delay)
        if rate is None:
            return most, now
        due = int((now - started) * rate) + 1 - done
        if due <= 0:
            return 0, started + done / rate
        return min(due, most), now
