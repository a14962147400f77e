"""The pure deadline arithmetic of the MCU path's periodic ticks.

The injected `visio_matrix.clock.Clock` drives the decisions that depend on time (keyframe-request throttling, picture
ages), so they are testable with a fake clock. The mixer and compositor ticks (20 ms audio, 1/fps
video) are media cadence: they sleep on the event loop's clock, with `next_deadline` deciding the
schedule, and media timestamps count ticks.
"""

from __future__ import annotations


def next_deadline(previous: float, period: float, now: float, max_lag_periods: int = 5) -> float:
    """The deadline of the tick after the one due at `previous`.

    Ticks keep a fixed cadence (`previous + period`) so that a late wake-up is caught up on the next
    tick; when the loop has fallen more than `max_lag_periods` behind (a stalled event loop), the
    schedule restarts from `now` instead of producing a burst of catch-up ticks.
    """
    deadline = previous + period
    if now - deadline > max_lag_periods * period:
        return now
    return deadline
