"""DownTrack's synchronous out path, against a recording send path (unit test: no network).

The header is built from a cached template instead of ``RtpPacket.serialize``: each sent packet must
be byte-for-byte what aiortc would have written, carry the publisher's payload and audio level
untouched, and the bounded backlog / refused sends must be counted drops.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)
from aiortc.rtp import RtpPacket

from visio_matrix.relay.forwarding import Counters, DownTrack, SubscriberWriter
from visio_matrix.tasks import TaskOwner

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


class RecordingPath:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.backlog_bytes = 0
        self.refuse = False

    def backlog(self) -> int:
        return self.backlog_bytes

    def send(self, data: bytes) -> bool:
        if self.refuse:
            return False
        self.sent.append(data)
        return True


async def make_down(kind: str = "audio") -> tuple[DownTrack, RecordingPath, Counters, RTCPeerConnection]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender = pc.addTransceiver(kind).sender
    requests: list[int] = []
    up: Any = SimpleNamespace(info=SimpleNamespace(kind=kind), request_keyframe=lambda: requests.append(1))
    counters = Counters()
    writer = SubscriberWriter(counters, queue_size=4)
    down = DownTrack(up, writer, sender, info=None, history_size=64)  # type: ignore[arg-type]
    path = RecordingPath()
    down._path = path  # type: ignore[assignment]
    codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    down.start(
        RTCRtpSendParameters(
            codecs=[codec],
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=4, uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=1, uri=AUDIO_LEVEL_URI),
            ],
            muxId="3",
        )
    )
    return down, path, counters, pc


def incoming(seq: int, ts: int, payload: bytes, level: tuple[bool, int] | None, marker: int = 0) -> RtpPacket:
    packet = RtpPacket(
        payload_type=109, marker=marker, sequence_number=seq, timestamp=ts, ssrc=42, payload=payload
    )
    packet.extensions.audio_level = level
    return packet


async def test_sent_bytes_are_what_aiortc_would_serialize() -> None:
    down, path, counters, pc = await make_down()
    try:
        levels: list[tuple[bool, int] | None] = [(True, 30), None, (False, 127), (True, 30), (False, 0)]
        payloads = [bytes([i]) * (50 + i) for i in range(len(levels))]
        for i, (level, payload) in enumerate(zip(levels, payloads, strict=True)):
            down.offer(incoming(65534 + i, 4_294_967_000 + 960 * i, payload, level, marker=i % 2), False)
        assert len(path.sent) == len(levels) and counters.packets_out == len(levels)
        parsed = [RtpPacket.parse(data, down.extensions) for data in path.sent]
        for i, (packet, data) in enumerate(zip(parsed, path.sent, strict=True)):
            assert packet.payload == payloads[i] and packet.extensions.audio_level == levels[i]
            assert packet.extensions.mid == "3" and packet.payload_type == 111 and packet.marker == i % 2
            assert packet.ssrc == down.sender._ssrc
            expected = RtpPacket(
                payload_type=111,
                marker=i % 2,
                sequence_number=packet.sequence_number,
                timestamp=packet.timestamp,
                ssrc=packet.ssrc,
                payload=payloads[i],
            )
            expected.extensions.mid = "3"
            expected.extensions.audio_level = levels[i]
            assert data == expected.serialize(down.extensions), f"packet {i} differs from aiortc's bytes"
        # Sequence numbers and timestamps follow the publisher's, across both wrap-arounds.
        seqs = [p.sequence_number for p in parsed]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        stamps = [p.timestamp for p in parsed]
        assert all((b - a) & 0xFFFFFFFF == 960 for a, b in itertools.pairwise(stamps))
        assert counters.bytes_out == sum(len(p) for p in payloads)
        # The history keeps the exact bytes sent, for a NACK (no RTX negotiated here: resent as is).
        down.on_feedback("nack", [seqs[2]])
        assert path.sent[-1] == path.sent[2] and counters.retransmissions == 1
    finally:
        await pc.close()


async def test_backlog_over_the_bound_and_refused_sends_are_counted_drops() -> None:
    down, path, counters, pc = await make_down()
    try:
        down.offer(incoming(100, 0, b"a" * 100, None), False)
        path.backlog_bytes = 4 * 1500 + 1  # above queue_size x 1500 bytes
        down.offer(incoming(101, 960, b"b" * 100, None), False)
        assert len(path.sent) == 1 and counters.drops == 1
        path.backlog_bytes = 0
        path.refuse = True  # libsrtp refuses (index too old): a drop, not an exception
        down.offer(incoming(102, 1920, b"c" * 100, None), False)
        assert len(path.sent) == 1 and counters.drops == 2 and counters.packets_out == 1
        path.refuse = False
        down.offer(incoming(103, 2880, b"d" * 100, None), False)
        sent = [RtpPacket.parse(d, down.extensions) for d in path.sent]
        # The packet dropped for the backlog left no gap; the refused one did (it was rewritten).
        assert [p.payload[:1] for p in sent] == [b"a", b"d"]
        assert (sent[1].sequence_number - sent[0].sequence_number) & 0xFFFF == 2
    finally:
        await pc.close()


class ExplodingPath(RecordingPath):
    def send(self, data: bytes) -> bool:
        raise RuntimeError("socket gone in an unexpected way")


async def test_one_failing_subscriber_does_not_starve_the_others() -> None:
    from visio_matrix.clock import FakeClock
    from visio_matrix.relay.forwarding import UpTrack

    broken, _, _, pc1 = await make_down()
    healthy, path, _, pc2 = await make_down()
    broken._path = ExplodingPath()  # type: ignore[assignment]
    broken.info = SimpleNamespace(track_id="down-1")  # type: ignore[assignment]
    counters = Counters()
    codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    info: Any = SimpleNamespace(kind="audio", track_id="t1")
    up = UpTrack(info, None, codec, counters, FakeClock(), TaskOwner("test"), 0.5)  # type: ignore[arg-type]
    broken.up = healthy.up = up
    up.downs.extend([broken, healthy])
    try:
        for seq in range(5):
            up.on_packet(incoming(seq, seq * 960, b"opus%d" % seq, None), codec)  # must not raise
        assert len(path.sent) == 5
        assert broken.failures == 5
        assert counters.drops == 5
    finally:
        await pc1.close()
        await pc2.close()
