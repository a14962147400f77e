"""Late joiners get a keyframe fast; a stalled subscriber does not slow the others."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc.rtp import is_rtcp

from visio_matrix.clock import SystemClock
from visio_matrix.relay import Relay
from visio_matrix.relay import aiortc_hooks as hooks

from .conftest import relay_options
from .peers import Peer, Signaling

pytestmark = pytest.mark.media


class StalledTransport:
    """A datagram transport whose socket refuses everything: datagrams pile up in its write buffer."""

    def __init__(self, real: asyncio.DatagramTransport) -> None:
        self.real = real
        self.buffered: list[bytes] = []

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.buffered.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(len(d) for d in self.buffered)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def video_from(signaling: Signaling, subscriber: str, publisher: str):  # type: ignore[no-untyped-def]
    owners = {
        s.track_id: s.publisher_id for s in signaling.conference.streams_for(subscriber) if s.kind == "video"
    }
    for track_id, record in signaling.peers[subscriber].received.items():
        if owners.get(track_id) == publisher:
            return record
    return None


async def test_late_joiner_decodes_a_keyframe_within_one_second(relay: Relay) -> None:
    conference = await relay.create_conference("late")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", (230, 20, 20), 440))
        await signaling.join(Peer("bob", (20, 230, 20), 1000))
        await signaling.wait_for(
            lambda: (r := video_from(signaling, "bob", "alice")) is not None and r.frames >= 30,
            30,
            "bob decoding alice's video for 2 s (well past alice's first keyframe)",
        )
        requests_before = next(s for s in conference.stats().participants if s.participant_id == "alice")
        carol = Peer("carol", (20, 20, 230), 2500)
        connected_at: list[float] = []

        @carol.pc.on("connectionstatechange")
        def on_state() -> None:
            if carol.pc.connectionState == "connected":
                connected_at.append(time.monotonic())

        await signaling.join(carol)
        await signaling.wait_for(
            lambda: (
                (r := video_from(signaling, "carol", "alice")) is not None and r.first_frame_at is not None
            ),
            15,
            "carol's first decoded frame of alice",
        )
        record = video_from(signaling, "carol", "alice")
        assert record is not None and record.first_frame_at is not None and connected_at
        # Subscriptions are negotiated right after carol's own answer; media can flow once connected.
        delay = record.first_frame_at - connected_at[0]
        assert delay < 1.0, f"first decodable frame {delay:.2f} s after carol connected"
        requests_after = next(s for s in conference.stats().participants if s.participant_id == "alice")
        assert requests_after.keyframe_requests_forwarded > requests_before.keyframe_requests_forwarded
    finally:
        await signaling.close()


async def test_stalled_subscriber_does_not_slow_the_others() -> None:
    relay = Relay(relay_options(subscriber_queue_size=8), SystemClock())
    conference = await relay.create_conference("stall")
    signaling = Signaling(relay, conference)
    stalled: StalledTransport | None = None
    try:
        for name, rgb, tone in (
            ("alice", (230, 20, 20), 440),
            ("bob", (20, 230, 20), 1000),
            ("carol", (20, 20, 230), 2500),
        ):
            await signaling.join(Peer(name, rgb, tone))
        await signaling.wait_for(
            lambda: all(
                (r := video_from(signaling, sub, pub)) is not None and r.frames >= 10
                for sub in ("alice", "bob", "carol")
                for pub in ("alice", "bob", "carol")
                if sub != pub
            ),
            30,
            "all video flowing",
        )
        # Carol stops reading, and the relay's socket toward her stalls: the kernel refuses every
        # datagram, so the datagram transport buffers them (what asyncio does on EAGAIN).
        carol = signaling.peers["carol"]
        for task in carol._readers:
            task.cancel()
        relay_side = conference._participants["carol"].pc  # the relay's connection to carol
        pair = hooks.RtpSendPath(relay_side.getTransceivers()[0].sender)._pair()
        assert pair is not None
        stalled = StalledTransport(pair.protocol.transport)
        pair.protocol.transport = stalled

        alice_sent, bob_sent = signaling.peers["alice"].video.count, signaling.peers["bob"].video.count  # type: ignore[union-attr]
        a_from_b, b_from_a = video_from(signaling, "alice", "bob"), video_from(signaling, "bob", "alice")
        assert a_from_b is not None and b_from_a is not None
        a_before, b_before = a_from_b.frames, b_from_a.frames
        drops_before = next(s.drops for s in conference.stats().participants if s.participant_id == "carol")
        await asyncio.sleep(3.0)  # a measurement window, not a wait for an event
        alice_sent = signaling.peers["alice"].video.count - alice_sent  # type: ignore[union-attr]
        bob_sent = signaling.peers["bob"].video.count - bob_sent  # type: ignore[union-attr]
        got_by_bob, got_by_alice = b_from_a.frames - b_before, a_from_b.frames - a_before
        assert got_by_bob >= 0.8 * alice_sent, f"bob got {got_by_bob} of alice's {alice_sent} frames"
        assert got_by_alice >= 0.8 * bob_sent, f"alice got {got_by_alice} of bob's {bob_sent} frames"
        carol_stats = next(s for s in conference.stats().participants if s.participant_id == "carol")
        assert carol_stats.drops > drops_before + 50, "carol's queue overflowed and the drops were counted"
        # The relay's RTP toward carol stops at the bound (aiortc's own RTCP and STUN may add a little).
        rtp_backlog = sum(len(d) for d in stalled.buffered if d[0] >= 128 and not is_rtcp(d))
        assert 0 < rtp_backlog <= 8 * 1500 + 1500, f"carol's RTP backlog: {rtp_backlog} bytes"
    finally:
        if stalled is not None:
            pair.protocol.transport = stalled.real  # the socket recovers: aiortc can send its BYE
        await signaling.close()
        await relay.close()
