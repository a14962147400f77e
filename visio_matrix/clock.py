"""Time as an input: the one place that reads the system clock.

Call and relay logic take a ``Clock`` so that tests can drive time without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds, for durations and timeouts."""
        ...

    def wall_ms(self) -> int:
        """Wall-clock milliseconds since the epoch, for records and Matrix timestamps."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


class FakeClock:
    """A clock for tests: time moves only when ``advance`` is called."""

    def __init__(self, start_wall_ms: int = 1_700_000_000_000) -> None:
        self._mono = 1000.0
        self._wall_ms = start_wall_ms

    def now(self) -> float:
        return self._mono

    def wall_ms(self) -> int:
        return self._wall_ms

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall_ms += int(seconds * 1000)
