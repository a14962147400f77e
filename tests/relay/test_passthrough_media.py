"""Payload bytes cross the relay unchanged (what end-to-end encrypted media needs)."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RtpPacket, is_rtcp

from visio_matrix.relay import Relay
from visio_matrix.relay import aiortc_hooks as hooks

from .peers import Peer, Signaling

pytestmark = pytest.mark.media


async def test_payloads_arrive_byte_identical(relay: Relay) -> None:
    conference = await relay.create_conference("passthrough")
    signaling = Signaling(relay, conference)
    try:
        alice = Peer("alice", (230, 20, 20), 440)
        bob = Peer("bob", None, None)  # only receives
        sent: set[bytes] = set()
        received: list[bytes] = []
        enough = asyncio.Event()

        await signaling.join(alice)
        # Record alice's outgoing RTP payloads before SRTP protection.
        transport = alice.pc.getTransceivers()[0].sender.transport
        original_send = transport._send_rtp

        async def spy_send(data: bytes) -> None:
            if not is_rtcp(data):
                sent.add(RtpPacket.parse(data).payload)
            await original_send(data)

        transport._send_rtp = spy_send  # type: ignore[method-assign]

        # Bob's side taps its receivers: the payloads exactly as they arrive, after SRTP.
        def on_track(track: object) -> None:
            for t in bob.pc.getTransceivers():
                if t.receiver.track is track:
                    hooks.tap_receiver(t.receiver, on_packet)

        def on_packet(packet: RtpPacket, codec: object) -> None:
            received.append(packet.payload)
            if len(received) >= 100:
                enough.set()

        bob.pc.on("track", on_track)
        await signaling.join_relay_offers(bob)  # bob sends nothing: the relay makes the offer
        await asyncio.wait_for(enough.wait(), 30)
        assert received and all(payload in sent for payload in received), (
            f"{sum(p not in sent for p in received)} of {len(received)} payloads changed in transit"
        )
    finally:
        await signaling.close()
