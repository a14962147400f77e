"""Pure audio mixing: per-source sample FIFOs and the "everyone but yourself" mix.

The full sum of all sources is computed once per 20 ms tick; each endpoint that is also a source gets
that sum minus its own contribution (exact, in int32, before limiting), every other endpoint shares
the plain sum. A soft limiter then maps the int32 sum into int16 without wrap-around and without the
harsh distortion of a hard clip.

Audio is mono, signed 16-bit, 48 kHz (what aiortc's Opus encoder takes).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
INT16_MAX = 32767

Samples = npt.NDArray[np.int16]
Wide = npt.NDArray[np.int32]


class SampleFifo:
    """Decoded samples of one source waiting to be mixed (thread-safe: decoder thread in, mixer out).

    It starts releasing samples once `prebuffer` samples are queued (absorbs network and decode
    jitter), never holds more than `capacity` samples (the oldest are dropped: the sender's clock
    runs faster than ours or the mixer stalled), and after an underrun waits for the prebuffer again.
    """

    def __init__(self, prebuffer: int = 2 * FRAME_SAMPLES, capacity: int = 10 * FRAME_SAMPLES) -> None:
        if prebuffer > capacity:
            raise ValueError("prebuffer larger than capacity")
        self._lock = threading.Lock()
        self._chunks: list[Samples] = []
        self._size = 0
        self._prebuffer = prebuffer
        self._capacity = capacity
        self._primed = False
        self.dropped_samples = 0
        self.underruns = 0

    def __len__(self) -> int:
        return self._size

    def push(self, samples: Samples) -> None:
        with self._lock:
            self._chunks.append(samples)
            self._size += len(samples)
            excess = self._size - self._capacity
            if excess > 0:
                self._discard(excess)
                self.dropped_samples += excess
            if self._size >= self._prebuffer:
                self._primed = True

    def pop(self, count: int = FRAME_SAMPLES) -> Samples | None:
        """`count` samples, or None while priming / after an underrun (the source is silent)."""
        with self._lock:
            if not self._primed:
                return None
            if self._size < count:
                self._primed = False
                self.underruns += 1
                return None
            data = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            out, rest = data[:count], data[count:]
            self._chunks = [rest] if len(rest) else []
            self._size = len(rest)
            return out

    def _discard(self, count: int) -> None:
        while count > 0 and self._chunks:
            head = self._chunks[0]
            if len(head) <= count:
                self._chunks.pop(0)
                self._size -= len(head)
                count -= len(head)
            else:
                self._chunks[0] = head[count:]
                self._size -= count
                count = 0


def soft_limit(wide: Wide, knee: int = 24576) -> Samples:
    """Map an int32 sum into int16: linear below `knee`, tanh-compressed above it.

    Never wraps around; a single source at full scale stays within 1 LSB of itself below the knee.
    """
    peak = int(np.max(np.abs(wide))) if len(wide) else 0
    if peak <= knee:
        return wide.astype(np.int16)
    x = wide.astype(np.float32)
    mag = np.abs(x)
    over = mag > knee
    head = INT16_MAX - knee
    mag[over] = knee + head * np.tanh((mag[over] - knee) / head)
    return np.clip(np.copysign(mag, x), -INT16_MAX - 1, INT16_MAX).astype(np.int16)


@dataclass(frozen=True)
class Mix:
    """One tick's mix: the full sum and each source's own contribution."""

    total: Wide
    contributions: Mapping[str, Samples]

    def for_sink(self, sink_id: str) -> Samples:
        """What `sink_id` hears: everyone but itself, limited to int16."""
        own = self.contributions.get(sink_id)
        if own is None:
            return soft_limit(self.total)
        return soft_limit(self.total - own.astype(np.int32))


def mix(contributions: Mapping[str, Samples], frame_samples: int = FRAME_SAMPLES) -> Mix:
    """Sum every source's frame once (silence when nothing contributes)."""
    total = np.zeros(frame_samples, dtype=np.int32)
    for samples in contributions.values():
        if len(samples) != frame_samples:
            raise ValueError(f"contribution of {len(samples)} samples, expected {frame_samples}")
        total += samples
    return Mix(total=total, contributions=dict(contributions))
