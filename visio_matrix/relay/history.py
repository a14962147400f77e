"""Bounded per-stream history of sent RTP packets, for retransmission on NACK (pure, no I/O)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class RtpHistory(Generic[T]):
    """A ring indexed by outgoing sequence number; a slot holds the last packet that used it."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"history size must be positive, got {size}")
        self._size = size
        self._slots: list[tuple[int, T] | None] = [None] * size

    def put(self, seq: int, item: T) -> None:
        self._slots[seq % self._size] = (seq, item)

    def get(self, seq: int) -> T | None:
        slot = self._slots[seq % self._size]
        if slot is None or slot[0] != seq:
            return None
        return slot[1]
