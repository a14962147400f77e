"""Hostile or broken participants: precise RelayErrors, the others unaffected, nothing leaked."""

from __future__ import annotations

import asyncio
import time

import pytest

from visio_matrix.clock import SystemClock
from visio_matrix.relay import ParticipantFailed, Relay
from visio_matrix.relay.errors import (
    DuplicateParticipantError,
    InvalidCandidateError,
    InvalidSdpError,
    NegotiationError,
    UnknownParticipantError,
    UnsupportedCodecError,
)

from .conftest import open_udp_sockets, relay_options
from .peers import Peer, Signaling

pytestmark = pytest.mark.media


def frames_between(signaling: Signaling) -> int:
    return sum(
        r.frames for peer in signaling.peers.values() for r in peer.received.values() if r.kind == "video"
    )


async def settle(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_bad_participants_get_clear_errors_and_leave_no_trace() -> None:
    tasks_before = len(asyncio.all_tasks())
    sockets_before = open_udp_sockets()
    relay = Relay(relay_options(connect_timeout=2.0), SystemClock())
    conference = await relay.create_conference("hostile")
    signaling = Signaling(relay, conference)
    ghost = Peer("ghost", (1, 2, 3), 300)
    try:
        await signaling.join(Peer("alice", (230, 20, 20), 440))
        await signaling.join(Peer("bob", (20, 230, 20), 1000))
        await signaling.wait_for(
            lambda: frames_between(signaling) >= 20, 30, "alice and bob exchanging video"
        )
        template = Peer("template", (0, 0, 0), 100)
        good_offer = await template.offer()
        await template.close()

        cases: list[tuple[str, type[Exception], str]] = [
            ("\x00\xff garbage \x01", InvalidSdpError, "does not start with 'v=0'"),
            ("v=0\r\n" + "a=" + "x" * 200_000 + "\r\n", InvalidSdpError, "more than the 65536 allowed"),
            (
                "\r\n".join(x for x in good_offer.splitlines() if not x.startswith("a=fingerprint")),
                InvalidSdpError,
                "DTLS fingerprint is missing",
            ),
            # Only an offer with nothing usable is refused (one bad section is rejected alone:
            # test_section_reject.py).
            (
                good_offer.replace("opus/48000/2", "G729/8000")
                .replace("VP8/90000", "VP9/90000")
                .replace("H264/90000", "AV1/90000"),
                UnsupportedCodecError,
                "(mid '0', audio): no forwardable codec offered",
            ),
            (
                good_offer.replace("opus/48000/2", "G729/8000")
                .replace("VP8/90000", "VP9/90000")
                .replace("H264/90000", "AV1/90000"),
                UnsupportedCodecError,
                "(mid '1', video)",
            ),
        ]
        for sdp, error, message in cases:
            with pytest.raises(error) as info:
                await conference.add_participant("mallory", offer_sdp=sdp)
            assert message in str(info.value)
            assert "mallory" not in conference.participant_ids()

        with pytest.raises(DuplicateParticipantError, match="'alice' is already"):
            await conference.add_participant("alice", offer_sdp=good_offer)
        with pytest.raises(UnknownParticipantError, match="no participant 'nobody'"):
            await conference.remove_participant("nobody")
        with pytest.raises(NegotiationError, match="no relay offer pending"):
            await conference.accept_answer("alice", good_offer)
        with pytest.raises(InvalidCandidateError, match="could not be parsed"):
            await conference.add_ice_candidate("alice", "candidate:not a candidate", sdp_mid="0")
        with pytest.raises(InvalidCandidateError, match="neither sdpMid nor sdpMLineIndex"):
            await conference.add_ice_candidate("alice", "candidate:1 1 udp 1 127.0.0.1 9 typ host")

        # A participant that never completes ICE: its offer is valid, but it never hears the answer
        # and its peer connection is gone, so connectivity checks go nowhere.
        failed_at = time.monotonic()
        await conference.add_participant("ghost", offer_sdp=await ghost.offer())
        await ghost.pc.close()
        await signaling.wait_for(
            lambda: any(
                isinstance(e, ParticipantFailed) and e.participant_id == "ghost" for e in signaling.events
            ),
            15,
            "ghost's ParticipantFailed event",
        )
        event = next(
            e for e in signaling.events if isinstance(e, ParticipantFailed) and e.participant_id == "ghost"
        )
        assert "ICE" in event.reason and time.monotonic() - failed_at < 15
        assert "ghost" not in conference.participant_ids()
        assert all(s.publisher_id != "ghost" for p in ("alice", "bob") for s in conference.streams_for(p))

        # The others were never disturbed: video keeps flowing between alice and bob.
        before = frames_between(signaling)
        await signaling.wait_for(
            lambda: frames_between(signaling) >= before + 20, 10, "more frames after the bad input"
        )
        assert set(conference.participant_ids()) == {"alice", "bob"}
    finally:
        await signaling.close()
        await ghost.close()
        await relay.close()
    # Nothing leaked: tasks and UDP sockets are back to where they were.
    assert await settle(lambda: len(asyncio.all_tasks()) <= tasks_before, 10), [
        t.get_coro() for t in asyncio.all_tasks()
    ]
    assert await settle(lambda: open_udp_sockets() <= sockets_before, 10), (
        open_udp_sockets(),
        sockets_before,
    )
