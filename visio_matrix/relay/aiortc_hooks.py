"""Every use of aiortc/aioice internals by the relay, in one place (aiortc==1.16.0, aioice 0.13).

aiortc always decodes what it receives and encodes what it sends; the relay forwards RTP packets
instead. The hooks below are the only code that touches private attributes; each one is covered by
``tests/relay/test_aiortc_hooks.py``, which fails loudly when an upgrade moves them.

- ``tap_receiver``: replaces ``RTCRtpReceiver._handle_rtp_packet`` (called by the DTLS transport
  with each decrypted RTP packet). Keeps aiortc's receiver statistics (so its RTCP receiver
  reports stay right), RTX unwrapping, NACK generation and REMB, but skips the depacketizer,
  jitter buffer and decoder: each packet goes to the relay's callback instead.
- ``hook_sender``: the sender's RTP loop idles on a ``ForwardedTrack`` that never yields; the hook
  captures the negotiated send parameters (``send``) and takes NACK/PLI/FIR out of
  ``_handle_rtcp_packet`` (the rest, e.g. receiver reports for RTT, still goes to aiortc).
- ``RtpSendPath`` / ``record_sent`` / ``sender_rtt``: write a packet synchronously (SRTP protect
  with the DTLS transport's session, ``sendto`` on aioice's nominated pair: none of aiortc's and
  aioice's awaited layers) and keep the sender-report counters right.
- ``restrict_ice``: aioice gathers host candidates on every interface but 127.0.0.1 and binds
  random ports; this makes one peer connection gather only on given addresses (and ports).
- ``route_rtp_by_mid``: aiortc's RTP router ignores the ``mid`` header extension; browsers' simulcast
  sections announce no SSRC, so a second video publication with the same payload type would be
  dropped. The hook routes an unknown SSRC by its ``mid`` first (and remembers it); a packet naming
  a ``mid`` not received on yet is dropped rather than handed to another m-line by payload type.
- ``add_header_extensions`` / ``pin_codecs`` / ``offer_direction`` / ``sender_started``: what the
  relay needs to accept simulcast RID extensions and to send on m-lines a participant offered
  (participants that always offer, LiveKit v1 clients).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pylibsrtp
from aioice import ice as aioice_ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcpeerconnection import filter_preferred_codecs
from aiortc.rtcrtpparameters import (
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    unwrap_rtx,
)

from .errors import PortRangeExhaustedError

logger = logging.getLogger(__name__)

OnPacket = Callable[[RtpPacket, RTCRtpCodecParameters], None]
OnStart = Callable[[RTCRtpSendParameters], None]
OnFeedback = Callable[[str, list[int]], None]  # ("nack", lost seqs) or ("pli", [])


class ForwardedTrack(MediaStreamTrack):
    """A track whose ``recv`` never returns: the sender's own RTP loop stays idle."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_id
        self._never: asyncio.Event = asyncio.Event()

    async def recv(self) -> Any:
        await self._never.wait()
        raise AssertionError("unreachable: ForwardedTrack never yields")


# ---- receiving ------------------------------------------------------------------------------------


def tap_receiver(receiver: RTCRtpReceiver, on_packet: OnPacket) -> None:
    """Send every decrypted RTP packet of ``receiver`` to ``on_packet`` instead of its decoder."""
    codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    rtx_ssrc: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
    # aiortc's own NACK generator for the stream (None for audio, as in aiortc).
    nacks: NackGenerator | None = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    send_remb: Callable[[tuple[int, list[int]]], Awaitable[None]] = _remb_sender(receiver)
    # Simulcast sections announce no SSRC, so no RTX pairing either: learn it from the RID extensions
    # (RTX packets carry the repaired RID of their media stream).
    rid_ssrc: dict[str, int] = {}

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            if remb is not None:
                await send_remb(remb)
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        rid = packet.extensions.rtp_stream_id
        if rid is not None and not is_rtx(codec):
            rid_ssrc[rid] = packet.ssrc
        if is_rtx(codec):
            original_ssrc = rtx_ssrc.get(packet.ssrc)
            if original_ssrc is None:
                original_ssrc = _pair_rtx(packet, rid_ssrc)
                if original_ssrc is not None:
                    rtx_ssrc[packet.ssrc] = original_ssrc
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or not isinstance(apt, int):
                return  # unknown RTX stream, or padding-only probe
            if apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = codecs[apt]
        if nacks is not None and nacks.add(packet):
            await receiver._send_rtcp_nack(packet.ssrc, sorted(nacks.missing))
        if packet.payload:
            on_packet(packet, codec)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def _pair_rtx(packet: RtpPacket, rid_ssrc: dict[str, int]) -> int | None:
    repaired = packet.extensions.repaired_rtp_stream_id
    if repaired is not None:
        return rid_ssrc.get(repaired)
    if len(set(rid_ssrc.values())) == 1:  # one layer accepted: its only media stream
        return next(iter(rid_ssrc.values()))
    return None


def _remb_sender(receiver: RTCRtpReceiver) -> Callable[[tuple[int, list[int]]], Awaitable[None]]:
    from aiortc.rtp import RTCP_PSFB_APP, pack_remb_fci

    async def send(remb: tuple[int, list[int]]) -> None:
        ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        if ssrc is not None:
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=ssrc, media_ssrc=0, fci=pack_remb_fci(*remb))
            await receiver._send_rtcp(packet)

    return send


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a PLI for ``media_ssrc`` to the publisher behind ``receiver``."""
    await receiver._send_rtcp_pli(media_ssrc)


def has_codec_preferences(transceiver: RTCRtpTransceiver) -> bool:
    return bool(transceiver._preferred_codecs)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs aiortc negotiated for this m-line (first = preferred)."""
    return list(transceiver._codecs)


def pin_codecs(transceiver: RTCRtpTransceiver, preferences: list[RTCRtpCodecCapability]) -> bool:
    """Restrict an already negotiated m-line (remote offer applied) to ``preferences``, for the answer
    and every later negotiation. False, and nothing changed, when none of them was offered there."""
    pinned = filter_preferred_codecs(list(transceiver._codecs), preferences)
    if not pinned or all(is_rtx(c) for c in pinned):
        return False
    transceiver.setCodecPreferences(preferences)
    transceiver._codecs = pinned
    return True


def offer_direction(transceiver: RTCRtpTransceiver) -> str | None:
    """The direction the remote offer allows this side (``sendonly`` when the peer only receives)."""
    direction: str | None = transceiver._offerDirection
    return direction


def add_header_extensions(transceiver: RTCRtpTransceiver, extensions: list[tuple[int, str]]) -> None:
    """Negotiate extra header extensions (ids as offered) on an m-line whose remote offer is applied:
    aiortc then writes them in its answer and parses them on received packets."""
    present = {e.uri for e in transceiver._headerExtensions}
    for ext_id, uri in extensions:
        if uri not in present:
            transceiver._headerExtensions.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


def sender_started(sender: RTCRtpSender) -> bool:
    """Whether aiortc started this sender (its RTP state cannot be handed to another track)."""
    started: bool = sender._RTCRtpSender__started  # type: ignore[attr-defined]
    return started


def route_rtp_by_mid(pc: RTCPeerConnection) -> None:
    """Route RTP with an unknown SSRC by its ``mid`` header extension first (idempotent)."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    for transport in transports:
        _route_by_mid(transport)


def _route_by_mid(transport: RTCDtlsTransport) -> None:
    router = transport._rtp_router
    if getattr(router, "_visio_by_mid", False):
        return
    original = router.route_rtp

    def route_rtp(packet: RtpPacket) -> Any:
        if packet.ssrc not in router.ssrc_table and packet.extensions.mid is not None:
            receiver = router.mid_table.get(packet.extensions.mid)
            if receiver is None:
                # An m-line this side has not started receiving on yet (the peer applied our offer
                # and sends before its answer reached us): aiortc would hand it, by payload type, to
                # another m-line of the kind for good. Dropped; the stream's next packets route.
                return None
            router.ssrc_table[packet.ssrc] = receiver
            return receiver
        return original(packet)

    router.route_rtp = route_rtp  # type: ignore[method-assign]
    router._visio_by_mid = True  # type: ignore[attr-defined]


# ---- sending --------------------------------------------------------------------------------------


def hook_sender(sender: RTCRtpSender, on_start: OnStart, on_feedback: OnFeedback) -> None:
    """Capture the negotiated send parameters; route NACK and PLI/FIR to ``on_feedback``."""
    original_send = sender.send
    original_rtcp = sender._handle_rtcp_packet

    async def send(parameters: RTCRtpSendParameters) -> None:
        started = sender._RTCRtpSender__started  # type: ignore[attr-defined]
        await original_send(parameters)
        if not started:
            on_start(parameters)

    async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            on_feedback("nack", list(packet.lost))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_feedback("pli", [])
        else:
            await original_rtcp(packet)

    sender.send = send  # type: ignore[method-assign]
    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) the sender announced in SDP."""
    return sender._ssrc, sender._rtx_ssrc


def set_sender_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The msid stream id aiortc writes in SDP for this sender."""
    sender._stream_id = stream_id


class RtpSendPath:
    """Synchronous send of serialized RTP for one sender: what ``RTCDtlsTransport._send_rtp`` does
    (SRTP protect, then ``RTCIceTransport._send`` -> aioice ``Connection.sendto`` ->
    ``StunProtocol.send_data`` -> ``DatagramTransport.sendto``) without its four awaited layers.

    Everything is looked up again on each call (a few attribute reads), so a new DTLS transport
    (renegotiation) or a new nominated ICE pair is picked up at once.
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender

    def _pair(self) -> Any:
        return self._sender.transport.transport._connection._nominated.get(1)

    def backlog(self) -> int:
        """Bytes waiting in the datagram transport's write buffer (0 unless the kernel refused some)."""
        pair = self._pair()
        if pair is None:
            return 0
        size: int = pair.protocol.transport.get_write_buffer_size()
        return size

    def send(self, data: bytes) -> bool:
        """SRTP-protect and send; ``ConnectionError`` if DTLS is not connected or ICE has no pair.

        False (nothing sent) when libsrtp refuses the packet: an index too far behind the highest
        sent (a packet reordered by more than libsrtp's replay window). aiortc's ``_send_rtp`` raises
        ``pylibsrtp.Error`` there, which would end the caller: here it is the caller's drop."""
        dtls = self._sender.transport
        if dtls._state is not DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        try:
            protected = dtls._tx_srtp.protect(data)
        except pylibsrtp.Error:
            return False
        transport = pair.protocol.transport
        if transport is None:  # the ICE pair's socket was closed under us
            raise ConnectionError("Cannot send data, socket closed")
        transport.sendto(protected, pair.remote_addr)
        return True


def record_sent(sender: RTCRtpSender, rtp_timestamp: int, payload_bytes: int, ntp_time: int) -> None:
    """Update the counters aiortc puts in this sender's RTCP sender reports."""
    sender._RTCRtpSender__ntp_timestamp = ntp_time  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count += payload_bytes  # type: ignore[attr-defined]
    sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]


def sender_rtt(sender: RTCRtpSender) -> float | None:
    """Round-trip time (s) aiortc estimated from the subscriber's receiver reports, if any."""
    rtt: float | None = sender._RTCRtpSender__rtt  # type: ignore[attr-defined]
    return rtt


# ---- ICE host candidates --------------------------------------------------------------------------


class PortRange:
    """Hands out UDP ports in [low, high], rotating, skipping ports already in use."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self._next = random.randint(low, high)

    async def bind(
        self, address: str, factory: Callable[[], asyncio.DatagramProtocol]
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        count = self.high - self.low + 1
        for _ in range(count):
            port = self._next
            self._next = self.low if port >= self.high else port + 1
            try:
                transport, protocol = await loop.create_datagram_endpoint(factory, local_addr=(address, port))
            except OSError:
                continue
            return transport, protocol
        raise PortRangeExhaustedError(f"no free UDP port on {address} in {self.low}-{self.high}")


def restrict_ice(
    pc: RTCPeerConnection, addresses: Sequence[str], ports: PortRange | None = None
) -> RTCPeerConnection:
    """Make ``pc`` offer host candidates only on ``addresses`` (and in ``ports`` when given).

    aioice skips 127.0.0.1 and binds random ports; this wraps ``pc.setLocalDescription`` (where
    aiortc gathers) so every ICE connection of ``pc`` gathers on the given addresses. Use it for
    the relay (configured addresses and port range) and for loopback test peers / clients::

        pc = restrict_ice(RTCPeerConnection(RTCConfiguration(iceServers=[])), ["127.0.0.1"])
    """
    original = pc.setLocalDescription
    wanted = tuple(addresses)

    async def set_local_description(description: Any = None) -> None:
        for connection in _ice_connections(pc):
            if not connection._local_candidates_start:
                _restrict_connection(connection, wanted, ports)
        await original(description)

    pc.setLocalDescription = set_local_description  # type: ignore[method-assign,assignment]
    return pc


def _ice_connections(pc: RTCPeerConnection) -> list[aioice_ice.Connection]:
    connections = [t.receiver.transport.transport.iceGatherer._connection for t in pc.getTransceivers()]
    if pc.sctp is not None:
        connections.append(pc.sctp.transport.transport.iceGatherer._connection)
    return connections


def _restrict_connection(
    connection: aioice_ice.Connection, addresses: tuple[str, ...], ports: PortRange | None
) -> None:
    async def get_component_candidates(
        component: int, addresses_: list[str], timeout: int = 5
    ) -> list[Candidate]:
        del addresses_, timeout  # aioice's own list, replaced by ours
        loop = asyncio.get_running_loop()
        candidates = []
        for address in addresses:
            factory = lambda: aioice_ice.StunProtocol(connection)  # noqa: E731
            bound: tuple[Any, Any]
            if ports is None:
                bound = await loop.create_datagram_endpoint(factory, local_addr=(address, 0))
            else:
                bound = await ports.bind(address, factory)
            protocol = bound[1]
            assert isinstance(protocol, aioice_ice.StunProtocol)
            connection._protocols.append(protocol)
            host, port = protocol.transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            candidates.append(protocol.local_candidate)
        return candidates

    def wrapper(component: int, addresses: list[str], timeout: int = 5) -> Awaitable[list[Candidate]]:
        return get_component_candidates(component, addresses, timeout)

    connection.get_component_candidates = wrapper  # type: ignore[method-assign,assignment]
