"""Per-subscriber rewriting of RTP sequence numbers and timestamps (pure, no I/O).

Each outgoing stream has its own sequence/timestamp space starting at random values, as a
sender would. Packets the relay deliberately does not send (congestion, waiting for a keyframe) are
"dropped" here so the subscriber sees no gap and sends no NACK for them. A late packet older than a
drop point cannot be mapped without colliding, so it is refused (``None``).
"""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` is after ``b`` (RFC 3550 wrap-around)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class SequenceRewriter:
    def __init__(self, out_start: int) -> None:
        self._out_start = out_start & 0xFFFF
        self._offset: int | None = None
        self._highest: int | None = None
        self._floor: int | None = None  # packets not newer than this arrived before a drop

    def rewrite(self, in_seq: int) -> int | None:
        """The outgoing sequence number for ``in_seq``, or None if it must not be sent."""
        if self._offset is None or self._highest is None:
            self._offset = (self._out_start - in_seq) % SEQ_MOD
            self._highest = in_seq
        elif seq_newer(in_seq, self._highest):
            self._highest = in_seq
        elif self._floor is not None and not seq_newer(in_seq, self._floor):
            return None
        return (in_seq + self._offset) % SEQ_MOD

    def drop(self, in_seq: int) -> None:
        """``in_seq`` will not be sent: close the gap it would leave."""
        if self._offset is None or self._highest is None:
            return  # nothing sent yet: the first sent packet fixes the offset
        if seq_newer(in_seq, self._highest):
            # in_seq's slot is reused by the next packet; packets between the previous highest and
            # in_seq that arrive later are refused (their slots may be taken).
            self._offset = (self._offset - 1) % SEQ_MOD
            self._highest = in_seq
            self._floor = in_seq


class TimestampRewriter:
    def __init__(self, out_start: int) -> None:
        self._out_start = out_start % TS_MOD
        self._offset: int | None = None

    def rewrite(self, in_ts: int) -> int:
        if self._offset is None:
            self._offset = (self._out_start - in_ts) % TS_MOD
        return (in_ts + self._offset) % TS_MOD
