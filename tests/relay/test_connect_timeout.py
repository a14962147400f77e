"""The connect timeout counts from the exchange that gives ICE both sides, not from a relay offer
that waits for a person to pick up (a DM ring can be answered up to a minute later)."""

from __future__ import annotations

import asyncio

import pytest

from visio_matrix.clock import SystemClock
from visio_matrix.relay import ParticipantConnected, ParticipantFailed, Relay

from .conftest import relay_options
from .peers import Peer, Signaling

pytestmark = pytest.mark.media


async def test_a_late_answer_to_a_relay_offer_still_connects() -> None:
    relay = Relay(relay_options(connect_timeout=1.0), SystemClock())
    conference = await relay.create_conference("late")
    signaling = Signaling(relay, conference)
    peer = Peer("callee", (10, 200, 10), 500)
    try:
        negotiated = await conference.add_participant(peer.name)  # the relay rings
        signaling.peers[peer.name] = peer
        await asyncio.sleep(1.5)  # picked up after the connect timeout
        peer.add_tracks()
        await conference.accept_answer(peer.name, await peer.answer(negotiated.sdp))
        await signaling.wait_for(
            lambda: any(isinstance(e, ParticipantConnected) for e in signaling.events), 10, "connected"
        )
        assert not any(isinstance(e, ParticipantFailed) for e in signaling.events)
    finally:
        await signaling.close()
        await relay.close()


async def test_an_offerer_that_never_connects_still_fails() -> None:
    relay = Relay(relay_options(connect_timeout=1.0), SystemClock())
    conference = await relay.create_conference("ghost")
    signaling = Signaling(relay, conference)
    ghost = Peer("ghost", (1, 2, 3), 300)
    try:
        await conference.add_participant(ghost.name, offer_sdp=await ghost.offer())  # never accepts
        await signaling.wait_for(
            lambda: any(isinstance(e, ParticipantFailed) for e in signaling.events), 10, "failed"
        )
        assert "ghost" not in conference.participant_ids()
    finally:
        await ghost.close()
        await signaling.close()
        await relay.close()
