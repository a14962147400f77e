"""Keyframe detection in RTP payloads and throttling of keyframe requests (pure, no I/O).

Detection reads only the payload descriptor / first bytes, which stay in clear under WebRTC
end-to-end encryption (LiveKit and Element Call leave the VP8 header and H264 NAL header unencrypted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


def vp8_is_keyframe_start(payload: bytes | memoryview) -> bool:
    """True if this VP8 RTP payload (RFC 7741) starts a keyframe."""
    if not payload:
        return False
    first = payload[0]
    extended = first & 0x80
    start = first & 0x10
    partition = first & 0x0F
    pos = 1
    if extended:
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id present
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
    if not start or partition != 0 or len(payload) <= pos:
        return False
    return (payload[pos] & 0x01) == 0


def h264_is_keyframe_start(payload: bytes) -> bool:
    """True if this H264 RTP payload (RFC 6184) carries an IDR slice start or an SPS."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:  # STAP-A
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if size == 0 or pos + 2 >= len(payload):
                return False
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal_type == 28 and len(payload) >= 2:  # FU-A
        return bool(payload[1] & 0x80) and (payload[1] & 0x1F) == 5
    return False


def is_keyframe_start(mime_type: str, payload: bytes) -> bool:
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_is_keyframe_start(payload)
    if mime == "video/h264":
        return h264_is_keyframe_start(payload)
    return True  # audio, or a codec we cannot parse: every packet is a safe starting point


@dataclass(frozen=True)
class KeyframeDecision:
    action: Literal["send", "defer", "coalesced"]
    retry_at: float | None = None  # for "defer": when the caller must call ``fire``


class KeyframeThrottle:
    """At most one keyframe request per ``min_interval`` toward one publisher track.

    A request inside the interval is not lost: the first one is deferred to the end of the
    interval (the caller schedules ``fire``), later ones coalesce into it. A keyframe arriving
    meanwhile satisfies the deferred request.
    """

    def __init__(self, min_interval: float) -> None:
        self._min_interval = min_interval
        self._last_sent: float | None = None
        self._pending = False

    def request(self, now: float) -> KeyframeDecision:
        if self._last_sent is None or now - self._last_sent >= self._min_interval:
            self._last_sent = now
            self._pending = False
            return KeyframeDecision("send")
        if self._pending:
            return KeyframeDecision("coalesced")
        self._pending = True
        return KeyframeDecision("defer", retry_at=self._last_sent + self._min_interval)

    def fire(self, now: float) -> bool:
        """Called at ``retry_at``: True if the deferred request must be sent now."""
        if not self._pending:
            return False
        self._pending = False
        self._last_sent = now
        return True

    def keyframe_seen(self) -> None:
        self._pending = False
