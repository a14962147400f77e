"""Per-packet probes in peer processes: when each RTP packet left a publisher, when it reached a subscriber.

Publisher side: the DTLS transport's ``_send_rtp`` is wrapped (time just before SRTP + sendto).
Subscriber side: ``RTCRtpReceiver._handle_rtp_packet`` is replaced (time just after SRTP decrypt):
it records the packet and never decodes, and sends a PLI (throttled) until the first VP8 keyframe of
each incoming stream, as a browser does for a stream it cannot decode yet. Subscribers send no NACKs
and no receiver reports, so loss is measured raw. Times come from ``time.monotonic()``
(CLOCK_MONOTONIC, shared by all processes on the machine), packets are identified by
:func:`rtpmeta.payload_key`, which an SFU's header rewrite leaves intact.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from .rtpmeta import (
    FLAG_KEYFRAME_START,
    FLAG_MARKER,
    FLAG_VIDEO,
    is_rtcp,
    payload_key,
    rtp_payload_end,
    rtp_payload_offset,
    vp8_keyframe_start,
)

PLI_INTERVAL_S = 0.25


@dataclass
class PacketLog:
    """Columns of recorded packets (compact arrays: they are pickled back to the orchestrator)."""

    times: array = field(default_factory=lambda: array("d"))
    keys: array = field(default_factory=lambda: array("q"))
    ssrcs: array = field(default_factory=lambda: array("L"))
    seqs: array = field(default_factory=lambda: array("H"))
    flags: array = field(default_factory=lambda: array("B"))

    def add(self, t: float, key: int, ssrc: int, seq: int, flags: int) -> None:
        self.times.append(t)
        self.keys.append(key)
        self.ssrcs.append(ssrc)
        self.seqs.append(seq)
        self.flags.append(flags)


@dataclass
class SubscriberState:
    """Everything one subscriber connection saw."""

    sub_id: int
    join_started: float
    recording: bool = False
    log: PacketLog = field(default_factory=PacketLog)
    first_packet: dict[int, float] = field(default_factory=dict)
    first_keyframe: dict[int, float] = field(default_factory=dict)
    last_pli: dict[int, float] = field(default_factory=dict)
    plis_sent: int = 0
    rtx_packets: int = 0


@dataclass
class PublisherState:
    """Packets one publisher connection sent."""

    pub_id: int
    recording: bool = False
    log: PacketLog = field(default_factory=PacketLog)


_receivers: dict[int, tuple[SubscriberState, bool]] = {}


def watch_receiver(receiver: RTCRtpReceiver, state: SubscriberState, kind: str) -> None:
    _receivers[id(receiver)] = (state, kind == "video")


def forget_receiver(receiver: RTCRtpReceiver) -> None:
    _receivers.pop(id(receiver), None)


async def _probe_rtp_packet(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
    now = time.monotonic()
    entry = _receivers.get(id(self))
    if entry is None:
        return
    state, video = entry
    codec = self._RTCRtpReceiver__codecs.get(packet.payload_type)  # type: ignore[attr-defined]
    if codec is None:
        return
    if codec.mimeType.lower().endswith("/rtx"):
        state.rtx_packets += 1
        return
    ssrc = packet.ssrc
    flags = 0
    if ssrc not in state.first_packet:
        state.first_packet[ssrc] = now
    if video:
        flags = FLAG_VIDEO
        if packet.marker:
            flags |= FLAG_MARKER
        if vp8_keyframe_start(packet.payload):
            flags |= FLAG_KEYFRAME_START
            state.first_keyframe.setdefault(ssrc, now)
        if ssrc not in state.first_keyframe and now - state.last_pli.get(ssrc, 0.0) >= PLI_INTERVAL_S:
            state.last_pli[ssrc] = now
            state.plis_sent += 1
            await self._send_rtcp_pli(ssrc)
    if state.recording:
        state.log.add(now, payload_key(packet.payload), ssrc, packet.sequence_number, flags)


def install_receiver_probe() -> None:
    """Replace the receive path of every ``RTCRtpReceiver`` in this process (subscribers never decode)."""
    RTCRtpReceiver._handle_rtp_packet = _probe_rtp_packet  # type: ignore[method-assign]


def watch_sender_transport(
    transport: RTCDtlsTransport, state: PublisherState, ssrc_flags: dict[int, int]
) -> None:
    """Wrap one DTLS transport's ``_send_rtp``: record media packets of the given SSRCs (not RTX/RTCP)."""
    original: Callable[[bytes], Awaitable[None]] = transport._send_rtp

    async def probed_send_rtp(data: bytes) -> None:
        if state.recording and not is_rtcp(data):
            flags = ssrc_flags.get(int.from_bytes(data[8:12], "big"))
            if flags is not None:
                view = memoryview(data)[rtp_payload_offset(data) : rtp_payload_end(data)]
                seq = int.from_bytes(data[2:4], "big")
                if data[1] & 0x80:
                    flags |= FLAG_MARKER
                ssrc = int.from_bytes(data[8:12], "big")
                state.log.add(time.monotonic(), payload_key(view), ssrc, seq, flags)
        await original(data)

    setattr(transport, "_send_rtp", probed_send_rtp)  # noqa: B010


def log_to_dict(log: PacketLog) -> dict[str, Any]:
    return {
        "times": log.times,
        "keys": log.keys,
        "ssrcs": log.ssrcs,
        "seqs": log.seqs,
        "flags": log.flags,
    }
