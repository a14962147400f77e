"""Per-packet probes in peer processes: when each RTP packet left a publisher, when it reached a subscriber.

Publisher side: the DTLS transport's ``_send_rtp`` is wrapped (time just before SRTP + sendto).
Subscriber side: ``RTCDtlsTransport._handle_rtp_data`` is replaced for watched transports (time
just after SRTP decrypt): it reads the RTP header only (no ``RtpPacket`` parse, no jitter buffer, no
decoding), records the packet, and sends a PLI (throttled) until the first VP8 keyframe of each
incoming stream, as a browser does for a stream it cannot decode yet. Subscribers' own CPU then
stays low, which matters on a 2-core machine shared with the relay under test. Subscribers send no NACKs
and no receiver reports, so loss is measured raw. Times come from ``time.monotonic()``
(CLOCK_MONOTONIC, shared by all processes on the machine), packets are identified by
:func:`rtpmeta.payload_key`, which an SFU's header rewrite leaves intact.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from visio_matrix.relay.keyframe import vp8_is_keyframe_start

from .rtpmeta import (
    FLAG_KEYFRAME_START,
    FLAG_MARKER,
    FLAG_VIDEO,
    is_rtcp,
    payload_key,
    rtp_payload_end,
    rtp_payload_offset,
)

PLI_INTERVAL_S = 0.25
PLI_SENDER_SSRC = 0x0B0E0C4  # any: SFUs route a PLI by its media SSRC


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


@dataclass
class _WatchedTransport:
    state: SubscriberState
    pc: RTCPeerConnection
    payload_types: dict[int, tuple[bool, bool]] = field(default_factory=dict)  # pt -> (video, rtx)

    def kind_of(self, pt: int) -> tuple[bool, bool] | None:
        found = self.payload_types.get(pt)
        if found is None:  # negotiation added m-lines since: re-read the negotiated codecs
            for t in self.pc.getTransceivers():
                for codec in t._codecs:
                    is_rtx = codec.mimeType.lower().endswith("/rtx")
                    if codec.payloadType is not None:
                        self.payload_types[codec.payloadType] = (t.kind == "video", is_rtx)
            found = self.payload_types.get(pt)
        return found


_transports: dict[int, _WatchedTransport] = {}
_original_handle_rtp_data = RTCDtlsTransport._handle_rtp_data


def watch_subscriber(pc: RTCPeerConnection, state: SubscriberState) -> None:
    """Record every RTP packet arriving on ``pc``'s (bundled) transport(s) into ``state``."""
    for t in pc.getTransceivers():
        _transports.setdefault(id(t.receiver.transport), _WatchedTransport(state, pc))


async def _probe_rtp_data(self: RTCDtlsTransport, data: bytes, arrival_time_ms: int) -> None:
    """Replaces aiortc's parse + route + depacketize + decode for watched transports."""
    watched = _transports.get(id(self))
    if watched is None:
        await _original_handle_rtp_data(self, data, arrival_time_ms)
        return
    now = time.monotonic()
    if len(data) < 12:
        return
    kind = watched.kind_of(data[1] & 0x7F)
    if kind is None:
        return
    video, rtx = kind
    state = watched.state
    if rtx:
        state.rtx_packets += 1
        return
    ssrc = int.from_bytes(data[8:12], "big")
    try:
        payload = memoryview(data)[rtp_payload_offset(data) : rtp_payload_end(data)]
    except ValueError:
        return
    flags = 0
    if ssrc not in state.first_packet:
        state.first_packet[ssrc] = now
    if video:
        flags = FLAG_VIDEO
        if data[1] & 0x80:
            flags |= FLAG_MARKER
        if vp8_is_keyframe_start(payload):
            flags |= FLAG_KEYFRAME_START
            state.first_keyframe.setdefault(ssrc, now)
        if ssrc not in state.first_keyframe and now - state.last_pli.get(ssrc, 0.0) >= PLI_INTERVAL_S:
            state.last_pli[ssrc] = now
            state.plis_sent += 1
            pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=PLI_SENDER_SSRC, media_ssrc=ssrc)
            with contextlib.suppress(ConnectionError):
                await self._send_rtp(bytes(pli))
    if state.recording:
        state.log.add(now, payload_key(payload), ssrc, int.from_bytes(data[2:4], "big"), flags)


def install_receiver_probe() -> None:
    """Subscribers in this process never parse beyond the RTP header, and never decode."""
    RTCDtlsTransport._handle_rtp_data = _probe_rtp_data  # type: ignore[method-assign]


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
