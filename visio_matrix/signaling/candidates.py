"""Batching of local ICE candidates into few ``m.call.candidates`` events (spec "ICE Candidate Batching").

The relay puts all its candidates in its SDP, so the bot normally has nothing to trickle; this is for
endpoints that do gather candidates over time. Candidates are collected for ``delay_ms`` after the first
one, then emitted as one batch; end-of-candidates (and a full batch) flushes at once, as the spec asks.
Pure: the caller passes the time in and sends what ``add`` / ``poll`` return.
"""

from __future__ import annotations

from typing import Final

from visio_matrix.signaling.messages import CandidateEntry, EndOfCandidates

DEFAULT_DELAY_MS: Final = 500  # the spec's suggested starting point after an answer (2 s after an invite)
DEFAULT_MAX_BATCH: Final = 100


class CandidateBatcher:
    def __init__(self, *, delay_ms: int = DEFAULT_DELAY_MS, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if delay_ms < 0 or max_batch < 1:
            raise ValueError("CandidateBatcher: delay_ms must be >= 0 and max_batch >= 1")
        self.delay_ms = delay_ms
        self.max_batch = max_batch
        self._pending: list[CandidateEntry] = []
        self._first_ms: int | None = None
        self._finished = False

    @property
    def due_ms(self) -> int | None:
        """When ``poll`` will return the pending batch, if any is pending."""
        return None if self._first_ms is None else self._first_ms + self.delay_ms

    @property
    def finished(self) -> bool:
        """End-of-candidates was added: later candidates are refused."""
        return self._finished

    def add(self, candidate: CandidateEntry, now_ms: int) -> tuple[CandidateEntry, ...] | None:
        """Queue one local candidate; returns a batch to send now (end of candidates, or batch full)."""
        if self._finished:
            raise ValueError("CandidateBatcher.add: candidates after end-of-candidates")
        self._pending.append(candidate)
        if self._first_ms is None:
            self._first_ms = now_ms
        if isinstance(candidate, EndOfCandidates):
            self._finished = True
            return self._take()
        if len(self._pending) >= self.max_batch:
            return self._take()
        return self.poll(now_ms)

    def poll(self, now_ms: int) -> tuple[CandidateEntry, ...] | None:
        """The pending batch once ``delay_ms`` has passed since its first candidate, else None."""
        due = self.due_ms
        if due is None or now_ms < due:
            return None
        return self._take()

    def flush(self) -> tuple[CandidateEntry, ...] | None:
        """Whatever is pending, now (e.g. when the call is answered or ends)."""
        return self._take() if self._pending else None

    def _take(self) -> tuple[CandidateEntry, ...]:
        batch, self._pending, self._first_ms = tuple(self._pending), [], None
        return batch
