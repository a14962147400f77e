"""Each aiortc/aioice internal the relay relies on: present with the expected shape, and working.

If one of these fails after an aiortc or aioice upgrade, update ``visio_matrix/relay/aiortc_hooks.py``
(and the pin in pyproject.toml) before anything else.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Callable
from importlib.metadata import version

import pytest
from aioice import ice as aioice_ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import RtpPacket

from visio_matrix.relay import aiortc_hooks as hooks
from visio_matrix.relay.errors import PortRangeExhaustedError

from .peers import ColorVideoTrack


def test_pinned_versions() -> None:
    assert version("aiortc") == "1.16.0", "aiortc_hooks.py was written against aiortc 1.16.0"
    assert version("aioice").startswith("0.13."), "aiortc_hooks.py was written against aioice 0.13"


def params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_private_methods_have_the_expected_signatures() -> None:
    assert params(RTCRtpReceiver._handle_rtp_packet) == ["self", "packet", "arrival_time_ms"]
    assert params(RTCRtpReceiver._send_rtcp_nack) == ["self", "media_ssrc", "lost"]
    assert params(RTCRtpReceiver._send_rtcp_pli) == ["self", "media_ssrc"]
    assert params(RTCRtpReceiver._send_rtcp) == ["self", "packet"]
    assert params(RTCRtpSender._handle_rtcp_packet) == ["self", "packet"]
    assert params(RTCRtpSender.send) == ["self", "parameters"]
    assert params(RTCDtlsTransport._send_rtp) == ["self", "data"]
    assert params(aioice_ice.Connection.get_component_candidates) == [
        "self",
        "component",
        "addresses",
        "timeout",
    ]
    assert params(aioice_ice.StunProtocol.__init__) == ["self", "receiver"]
    # RtpSendPath replays these four awaited layers synchronously.
    assert params(aioice_ice.Connection.sendto) == ["self", "data", "component"]
    assert params(aioice_ice.StunProtocol.send_data) == ["self", "data", "addr"]
    assert isinstance(aioice_ice.CandidatePair.remote_addr, property)
    source = inspect.getsource(RTCDtlsTransport._send_rtp)
    assert "self._tx_srtp.protect(data)" in source and "await self.transport._send(data)" in source


async def test_private_attributes_exist_on_fresh_objects() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("video", direction="sendrecv")
        receiver, sender = transceiver.receiver, transceiver.sender
        for name in (
            "codecs",
            "rtx_ssrc",
            "remote_streams",
            "remote_bitrate_estimator",
            "nack_generator",
            "rtcp_ssrc",
        ):
            assert hasattr(receiver, f"_RTCRtpReceiver__{name}"), name
        for name in ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count", "rtt", "started"):
            assert hasattr(sender, f"_RTCRtpSender__{name}"), name
        assert isinstance(sender._ssrc, int) and isinstance(sender._rtx_ssrc, int)
        assert isinstance(sender._stream_id, str)
        assert isinstance(transceiver._codecs, list) and isinstance(transceiver._preferred_codecs, list)
        connection = receiver.transport.transport.iceGatherer._connection
        assert isinstance(connection, aioice_ice.Connection)
        assert connection._local_candidates_start is False and connection._protocols == []
        # RtpSendPath: DTLS state and SRTP session, ICE transport -> aioice connection -> nominated pairs.
        dtls = sender.transport
        assert dtls._state is DtlsState.NEW and hasattr(dtls, "_tx_srtp")
        assert sender.transport.transport._connection is connection and connection._nominated == {}
        path = hooks.RtpSendPath(sender)
        assert path.backlog() == 0
        with pytest.raises(ConnectionError):
            path.send(b"\x80" + bytes(11))
    finally:
        await pc.close()


async def test_hooks_for_offered_sections_simulcast_and_mid_routing() -> None:
    """pin_codecs, offer_direction, add_header_extensions, sender_started, route_rtp_by_mid, RTX by RID."""
    from aiortc.rtcpeerconnection import filter_preferred_codecs
    from aiortc.rtp import HeaderExtensions

    assert params(filter_preferred_codecs) == ["codecs", "preferred"]
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        offerer.addTransceiver("video", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        [t] = answerer.getTransceivers()
        assert hooks.offer_direction(t) == "sendonly" and not hooks.sender_started(t.sender)
        vp8 = [
            c
            for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType in ("video/VP8", "video/rtx")
        ]
        assert hooks.pin_codecs(t, vp8)
        assert [c.mimeType for c in t._codecs] == ["video/VP8", "video/rtx"] and t._preferred_codecs == vp8
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]
        assert not hooks.pin_codecs(t, opus) and len(t._codecs) == 2  # nothing in common: unchanged
        hooks.add_header_extensions(t, [(10, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id")])
        hooks.add_header_extensions(t, [(10, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id")])
        assert [e.id for e in t._headerExtensions].count(10) == 1
        await answerer.setLocalDescription(await answerer.createAnswer())
        assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answerer.localDescription.sdp

        hooks.route_rtp_by_mid(answerer)
        hooks.route_rtp_by_mid(answerer)  # idempotent
        router = t.receiver.transport._rtp_router
        receiver = t.receiver
        router.register_receiver(receiver, ssrcs=[], payload_types=[96], mid="0")
        router.register_receiver(object(), ssrcs=[], payload_types=[96], mid="1")  # type: ignore[arg-type]
        packet = RtpPacket(payload_type=96, ssrc=1234)
        assert router.route_rtp(packet) is None  # two receivers share the PT, no mid: dropped
        packet.extensions = HeaderExtensions(mid="0")
        assert router.route_rtp(packet) is receiver and router.ssrc_table[1234] is receiver
    finally:
        await offerer.close()
        await answerer.close()


def test_rtx_of_a_simulcast_layer_is_paired_by_its_rid() -> None:
    from aiortc.rtp import HeaderExtensions

    media = RtpPacket(ssrc=1)
    media.extensions = HeaderExtensions(rtp_stream_id="f")
    rid_ssrc: dict[str, int] = {"f": 1, "h": 2}
    rtx = RtpPacket(ssrc=9)
    rtx.extensions = HeaderExtensions(repaired_rtp_stream_id="f")
    assert hooks._pair_rtx(rtx, rid_ssrc) == 1
    assert hooks._pair_rtx(RtpPacket(ssrc=9), rid_ssrc) is None  # no repaired RID, two layers
    assert hooks._pair_rtx(RtpPacket(ssrc=9), {"f": 1}) == 1  # one layer accepted: its stream
    assert hooks._pair_rtx(RtpPacket(ssrc=9), {}) is None


async def test_record_sent_and_rtt_use_the_sender_report_counters() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sender = pc.addTransceiver("audio").sender
        hooks.record_sent(sender, 1234, 100, 5678)
        hooks.record_sent(sender, 1300, 50, 5679)
        assert sender._RTCRtpSender__packet_count == 2  # type: ignore[attr-defined]
        assert sender._RTCRtpSender__octet_count == 150  # type: ignore[attr-defined]
        assert sender._RTCRtpSender__rtp_timestamp == 1300  # type: ignore[attr-defined]
        assert hooks.sender_rtt(sender) is None
        stats = await sender.getStats()
        outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert outbound[0].packetsSent == 2 and outbound[0].bytesSent == 150
    finally:
        await pc.close()


@pytest.mark.media
async def test_restrict_ice_and_taps_forward_packets_without_decoding() -> None:
    """A real sender -> receiver pair on 127.0.0.1 in a port range; the receiver is tapped."""
    ports = hooks.PortRange(43000, 43099)
    a = hooks.restrict_ice(RTCPeerConnection(RTCConfiguration(iceServers=[])), ["127.0.0.1"], ports)
    b = hooks.restrict_ice(RTCPeerConnection(RTCConfiguration(iceServers=[])), ["127.0.0.1"])
    got: list[tuple[RtpPacket, str]] = []
    tapped, ten_packets, pli = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def on_packet(packet: RtpPacket, mime: str) -> None:
        got.append((packet, mime))
        if len(got) >= 10:
            ten_packets.set()

    def on_track(track: object) -> None:
        for t in b.getTransceivers():
            if t.receiver.track is track:
                hooks.tap_receiver(t.receiver, lambda p, c: on_packet(p, c.mimeType))
                tapped.set()

    b.on("track", on_track)
    sender = a.addTrack(ColorVideoTrack((200, 0, 0)))
    started = asyncio.Event()

    def on_feedback(kind: str, lost: list[int]) -> None:
        if kind == "pli":
            pli.set()

    hooks.hook_sender(sender, lambda params: started.set(), on_feedback)
    try:
        await a.setLocalDescription(await a.createOffer())
        offer = a.localDescription.sdp
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        assert candidates, offer
        for line in candidates:
            fields = line.split()
            assert fields[4] == "127.0.0.1" and 43000 <= int(fields[5]) <= 43099, line
        await b.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await b.setLocalDescription(await b.createAnswer())
        assert "127.0.0.1" in b.localDescription.sdp
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(tapped.wait(), 10)
        await asyncio.wait_for(started.wait(), 20)
        await asyncio.wait_for(ten_packets.wait(), 20)
        assert len(got) >= 10 and all(mime == "video/VP8" for _, mime in got)
        # The decoder is bypassed: the receiver's track never yields a frame.
        receiver_track = b.getTransceivers()[0].receiver.track
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receiver_track.recv(), 0.3)
        # RtpSendPath: a packet sent synchronously arrives decrypted, payload byte-identical.
        ssrc, pt = got[-1][0].ssrc, got[-1][0].payload_type
        marker = bytes(range(256)) * 4
        direct = RtpPacket(payload_type=pt, sequence_number=60000, timestamp=1, ssrc=ssrc, payload=marker)
        path = hooks.RtpSendPath(sender)
        assert path.backlog() == 0
        count = len(got)
        assert path.send(direct.serialize()) is True
        await wait_until(lambda: any(p.payload == marker for p, _ in got[count:]), 10, "direct packet")
        # A packet far behind the highest index sent: libsrtp refuses it; a refusal, not an exception.
        direct.sequence_number = 60000 - 5000
        assert path.send(direct.serialize()) is False
        # A PLI from the tapped side reaches the sender hook as "pli".
        await hooks.request_keyframe(b.getTransceivers()[0].receiver, got[-1][0].ssrc)
        await asyncio.wait_for(pli.wait(), 10)
    finally:
        await a.close()
        await b.close()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_port_range_exhaustion_is_a_relay_error() -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        with pytest.raises(PortRangeExhaustedError, match=f"no free UDP port on 127.0.0.1 in {port}-{port}"):
            await hooks.PortRange(port, port).bind("127.0.0.1", asyncio.DatagramProtocol)
    finally:
        busy.close()
