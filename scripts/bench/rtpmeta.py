"""Pure helpers reading RTP/RTCP headers and VP8 payload descriptors, used by the bench's probes.

Nothing here does I/O: the probes call these on every packet, so they stay small and allocation-free.
"""

from __future__ import annotations

import zlib

FLAG_VIDEO = 1
FLAG_MARKER = 2
FLAG_KEYFRAME_START = 4


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 sit where RTP's marker+payload type is."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def rtp_payload_offset(data: bytes) -> int:
    """Offset of the payload in an RTP packet (after CSRCs and the header extension)."""
    if len(data) < 12:
        raise ValueError(f"RTP packet too short: {len(data)} bytes")
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < offset + 4:
            raise ValueError("RTP header extension truncated")
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    if offset > len(data):
        raise ValueError("RTP header longer than packet")
    return offset


def rtp_payload_end(data: bytes) -> int:
    """End of the payload, without padding (P bit: the last byte counts the padding)."""
    if data[0] & 0x20 and len(data) > 12:
        return len(data) - data[-1]
    return len(data)


def payload_key(payload: bytes | memoryview) -> int:
    """Identity of a payload that survives an SFU's header rewrite (SSRC, sequence, timestamp, PT).

    CRC32 and length: cheap, and the bench matches each received key only against sends that are
    at most a few seconds older, so collisions between distinct payloads are negligible.
    """
    return (zlib.crc32(payload) << 16) | (len(payload) & 0xFFFF)
