"""Active speaker detection from audio levels, with hysteresis (pure, no I/O).

Input: RFC 6464 levels (0 = loudest, 127 = silence, in -dBov) with the time they were observed.
Each participant's score is the mean loudness (127 - level) of its samples in the last ``window``
seconds (no recent sample: score 0). The speaker changes when

- nobody is the speaker yet and someone's score reaches ``min_score``; or
- another participant's score beats the current speaker's by ``margin`` (and reaches
  ``min_score``) and the current speaker has held the floor for at least ``min_hold`` seconds.

When everybody falls silent the last speaker stays (as in Galene and Element Call); when the
speaker leaves, the floor goes to the loudest one left, or to nobody.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class SpeakerChange:
    speaker: str | None


class ActiveSpeakerDetector:
    def __init__(
        self,
        *,
        window: float = 0.5,
        min_score: float = 127 - 50,  # -50 dBov on average over the window
        margin: float = 6.0,
        min_hold: float = 1.0,
    ) -> None:
        self._window = window
        self._min_score = min_score
        self._margin = margin
        self._min_hold = min_hold
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._speaker: str | None = None
        self._since = 0.0

    @property
    def speaker(self) -> str | None:
        return self._speaker

    def observe(self, participant_id: str, level: int, now: float) -> None:
        if not 0 <= level <= 127:
            raise ValueError(f"audio level must be in 0..127 (-dBov), got {level}")
        samples = self._samples.setdefault(participant_id, deque())
        samples.append((now, 127 - level))
        self._expire(samples, now)

    def remove(self, participant_id: str) -> None:
        self._samples.pop(participant_id, None)

    def score(self, participant_id: str, now: float) -> float:
        samples = self._samples.get(participant_id)
        if not samples:
            return 0.0
        self._expire(samples, now)
        if not samples:
            return 0.0
        return sum(loudness for _, loudness in samples) / len(samples)

    def evaluate(self, now: float) -> SpeakerChange | None:
        """Decide who speaks now; returns the change, or None if the speaker stays."""
        scores = {pid: self.score(pid, now) for pid in self._samples}
        best = max(scores, key=lambda pid: scores[pid], default=None)
        best_score = scores[best] if best is not None else 0.0
        current = self._speaker
        if current is not None and current not in self._samples:
            new = best if best is not None and best_score >= self._min_score else None
            return self._change(new, now)
        if best is None or best == current or best_score < self._min_score:
            return None
        if current is None:
            return self._change(best, now)
        if now - self._since < self._min_hold:
            return None
        if best_score >= scores.get(current, 0.0) + self._margin:
            return self._change(best, now)
        return None

    def _change(self, new: str | None, now: float) -> SpeakerChange | None:
        if new == self._speaker:
            return None
        self._speaker = new
        self._since = now
        return SpeakerChange(new)

    def _expire(self, samples: deque[tuple[float, int]], now: float) -> None:
        while samples and samples[0][0] <= now - self._window:
            samples.popleft()


def levels_from_mcu(levels_dbov: dict[str, float], with_extension: set[str]) -> dict[str, int]:
    """MCU-measured levels (dBov, 0 = full scale, negative below) as RFC 6464 levels (0..127).

    Participants whose packets carry the audio-level extension are left out: that source wins.
    """
    return {
        pid: max(0, min(127, round(-level)))
        for pid, level in levels_dbov.items()
        if pid not in with_extension
    }
