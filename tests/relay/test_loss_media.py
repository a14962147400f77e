"""Packet loss on either leg is repaired by NACK + retransmission, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiortc import RTCPeerConnection

from visio_matrix.relay import Relay

from .peers import Peer, Received, Signaling

pytestmark = pytest.mark.media

VP8_PT, RTX_PT = 97, 98  # aiortc's numbering, used by the relay and the test peers alike


def video_of(signaling: Signaling, subscriber: str, publisher: str) -> Received | None:
    ids = {
        s.track_id
        for s in signaling.conference.streams_for(subscriber)
        if s.publisher_id == publisher and s.kind == "video"
    }
    found = [r for track_id, r in signaling.peers[subscriber].received.items() if track_id in ids]
    return found[-1] if found else None


class LossyLink:
    """Drops every ``every``-th VP8 packet a peer connection receives, before SRTP (as a network
    would: a retransmission with the same sequence number is then no replay); counts repairs: RTX
    packets (what aiortc publishers send) and VP8 packets arriving again with a dropped sequence
    number (what the relay sends: plain retransmissions). SRTP leaves the RTP header in clear."""

    def __init__(self, pc: RTCPeerConnection, every: int) -> None:
        self.dropped = 0
        self.rtx_seen = 0
        self.resent_seen = 0
        self._dropped_seqs: set[tuple[int, int]] = set()  # (ssrc, seq)
        self._count = 0
        ice = pc.getTransceivers()[0].receiver.transport.transport  # bundled: one ICE transport
        original: Callable[[], Awaitable[bytes]] = ice._recv

        async def recv() -> bytes:
            while True:
                data = await original()
                if len(data) < 12 or not 127 < data[0] < 192:  # not RTP/RTCP (DTLS, STUN)
                    return data
                pt = data[1] & 0x7F
                key = (int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big"))
                if pt == VP8_PT:
                    if key in self._dropped_seqs:
                        self.resent_seen += 1
                        self._dropped_seqs.discard(key)
                    else:
                        self._count += 1
                        if self._count % every == 0:
                            self.dropped += 1
                            self._dropped_seqs.add(key)
                            continue
                elif pt == RTX_PT and len(data) > 14:
                    self.rtx_seen += 1
                return data

        ice._recv = recv  # type: ignore[method-assign]


async def measure(signaling: Signaling, seconds: float) -> tuple[int, int]:
    """(frames alice produced, frames bob decoded from alice) over a measurement window."""
    alice, record = signaling.peers["alice"].video, video_of(signaling, "bob", "alice")
    assert alice is not None and record is not None
    produced, decoded = alice.count, record.frames
    await asyncio.sleep(seconds)  # a measurement window, not a wait for an event
    return alice.count - produced, record.frames - decoded


@pytest.mark.parametrize("leg", ["subscriber", "publisher"])
async def test_lost_video_packets_are_retransmitted(relay: Relay, leg: str) -> None:
    conference = await relay.create_conference(f"loss-{leg}")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", (230, 20, 20), 440))
        # A second video publisher: bob then receives two video m-lines sharing payload types (aiortc
        # receivers cannot route RTX there: the relay's retransmissions must still reach bob).
        await signaling.join(Peer("carol", (20, 20, 230), 700))
        await signaling.join(Peer("bob", (20, 230, 20), 1000))
        await signaling.wait_for(
            lambda: (r := video_of(signaling, "bob", "alice")) is not None and r.frames >= 10,
            30,
            "bob decoding alice",
        )
        if leg == "subscriber":  # relay -> bob loses packets: bob NACKs the relay
            link = LossyLink(signaling.peers["bob"].pc, every=7)
        else:  # alice -> relay loses packets: the relay NACKs alice
            link = LossyLink(conference._participants["alice"].pc, every=7)
        produced, decoded = await measure(signaling, 3.0)
        assert link.dropped >= 3, "the lossy link dropped packets"
        assert decoded >= 0.8 * produced, f"bob decoded {decoded} of {produced} frames despite the loss"
        if leg == "subscriber":
            assert link.resent_seen >= 1, "the relay's retransmissions arrived on the lossy leg"
        else:
            assert link.rtx_seen >= 1, "alice's retransmissions (RTX) arrived on the lossy leg"
        bob = next(s for s in conference.stats().participants if s.participant_id == "bob")
        if leg == "subscriber":
            assert bob.nacks_received >= 1 and bob.retransmissions >= 1, bob
    finally:
        await signaling.close()
