"""Pure audio level measurement of decoded audio, in dBov.

Levels are in dBov as in RFC 6464: 0.0 is a full-scale square wave, -127.0 is silence (the floor).
A `LevelMeter` follows peaks immediately and decays slowly, so `levels()` reflects "recent" speech
rather than the last 20 ms. Active-speaker selection is the relay's `relay.speaker` detector, which
takes RFC 6464 levels as positive -dBov integers: feed it `to_rfc6464(level)`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

SILENCE_DBOV = -127.0
FULL_SCALE = 32768.0


def dbov(samples: npt.NDArray[np.int16]) -> float:
    """RMS level of int16 samples in dBov, clamped to [-127, 0]."""
    if len(samples) == 0:
        return SILENCE_DBOV
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    if rms <= 0.0:
        return SILENCE_DBOV
    return max(SILENCE_DBOV, min(0.0, 20.0 * math.log10(rms / FULL_SCALE)))


class LevelMeter:
    """Peak-follow, slow-decay level of one source (dBov), updated once per mixed frame."""

    def __init__(self, decay_db_per_update: float = 1.0) -> None:
        self._decay = decay_db_per_update
        self.level = SILENCE_DBOV

    def update(self, frame_dbov: float) -> float:
        self.level = max(frame_dbov, self.level - self._decay, SILENCE_DBOV)
        return self.level


def to_rfc6464(level_dbov: float) -> int:
    """A dBov level as the RFC 6464 / `relay.speaker` scale: 0 (loudest) .. 127 (silence)."""
    return max(0, min(127, round(-level_dbov)))
