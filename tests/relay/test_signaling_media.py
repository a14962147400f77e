"""Signaling with real peers: relay-made offers, (un)subscribe, leaving, end-of-candidates."""

from __future__ import annotations

import asyncio

import pytest

from visio_matrix.relay import (
    NegotiationNeeded,
    ParticipantConnected,
    ParticipantLeft,
    Relay,
    TrackPublished,
    TrackUnpublished,
)

from .peers import Peer, Received, Signaling

pytestmark = pytest.mark.media

RED, GREEN = (230, 20, 20), (20, 230, 20)


def video_of(signaling: Signaling, subscriber: str, publisher: str) -> Received | None:
    """The live video stream ``subscriber`` receives from ``publisher`` (per the relay's metadata)."""
    owners = {
        s.track_id
        for s in signaling.conference.streams_for(subscriber)
        if s.publisher_id == publisher and s.kind == "video"
    }
    found = [r for track_id, r in signaling.peers[subscriber].received.items() if track_id in owners]
    return found[-1] if found else None


def looks(record: Received | None, rgb: tuple[int, int, int]) -> bool:
    return (
        record is not None
        and record.frames >= 5
        and record.last_rgb is not None
        and all(abs(a - b) < 40 for a, b in zip(record.last_rgb, rgb, strict=True))
    )


async def test_relay_offer_flow_subscriptions_and_leaving(relay: Relay) -> None:
    conference = await relay.create_conference("signaling")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", RED, 440))
        await signaling.join_relay_offers(Peer("bob", GREEN, 1000))
        await signaling.wait_for(
            lambda: (
                looks(video_of(signaling, "alice", "bob"), GREEN)
                and looks(video_of(signaling, "bob", "alice"), RED)
            ),
            30,
            "alice and bob seeing each other's colour",
        )
        kinds = {
            (e.track.participant_id, e.track.kind) for e in signaling.events if isinstance(e, TrackPublished)
        }
        assert kinds == {("alice", "audio"), ("alice", "video"), ("bob", "audio"), ("bob", "video")}
        assert {e.participant_id for e in signaling.events if isinstance(e, ParticipantConnected)} == {
            "alice",
            "bob",
        }

        # alice stops receiving bob: a new offer for alice, no stream of bob's in her metadata.
        offers_before = sum(
            isinstance(e, NegotiationNeeded) and e.participant_id == "alice" for e in signaling.events
        )
        await conference.unsubscribe("alice", "bob")
        assert [s for s in conference.streams_for("alice") if s.publisher_id == "bob"] == []
        await signaling.wait_for(
            lambda: (
                sum(
                    isinstance(e, NegotiationNeeded) and e.participant_id == "alice" for e in signaling.events
                )
                > offers_before
            ),
            10,
            "alice's renegotiation",
        )
        await asyncio.sleep(0.3)  # let packets in flight land before measuring
        frames = sum(r.frames for r in signaling.peers["alice"].received.values() if r.kind == "video")
        await asyncio.sleep(1.0)  # a measurement window: nothing may arrive any more
        assert (
            sum(r.frames for r in signaling.peers["alice"].received.values() if r.kind == "video")
            <= frames + 1
        )
        # bob still gets alice.
        assert looks(video_of(signaling, "bob", "alice"), RED)

        # and back: a new stream, decoded again (the relay asks bob for a keyframe).
        await conference.subscribe("alice", "bob")
        await signaling.wait_for(
            lambda: looks(video_of(signaling, "alice", "bob"), GREEN),
            15,
            "alice seeing bob again after subscribe",
        )

        await conference.add_ice_candidate("alice", None)  # end-of-candidates is accepted

        # bob leaves: his tracks are unpublished, alice renegotiates, her metadata has no bob.
        await conference.remove_participant("bob")

        def unpublished() -> set[tuple[str, str]]:
            return {
                (e.track.participant_id, e.track.kind)
                for e in signaling.events
                if isinstance(e, TrackUnpublished)
            }

        await signaling.wait_for(
            lambda: any(
                isinstance(e, ParticipantLeft) and e.participant_id == "bob" for e in signaling.events
            ),
            10,
            "bob's ParticipantLeft event",
        )
        assert unpublished() == {("bob", "audio"), ("bob", "video")}
        assert conference.streams_for("alice") == ()
        assert conference.participant_ids() == ("alice",)
        assert [t.participant_id for t in conference.published_tracks()] == ["alice", "alice"]
    finally:
        await signaling.close()


async def test_trickled_candidates_connect(relay: Relay) -> None:
    conference = await relay.create_conference("trickle")
    signaling = Signaling(relay, conference)
    try:
        alice = Peer("alice", RED, 440)
        signaling.peers["alice"] = alice
        offer = await alice.offer()
        lines = offer.splitlines()
        candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
        assert candidates
        stripped = (
            "\r\n".join(x for x in lines if not x.startswith(("a=candidate:", "a=end-of-candidates")))
            + "\r\n"
        )
        negotiated = await conference.add_participant("alice", offer_sdp=stripped)
        await alice.accept(negotiated.sdp)
        for candidate in candidates:
            await conference.add_ice_candidate("alice", candidate, sdp_mid="0", sdp_mline_index=0)
        await conference.add_ice_candidate("alice", None)
        # The relay took them in (its remote description now lists them), then connected.
        remote = conference._participants["alice"].pc.remoteDescription.sdp
        assert all(f"a={candidate}" in remote for candidate in candidates), remote
        assert "a=end-of-candidates" in remote
        await signaling.wait_for(
            lambda: any(
                isinstance(e, ParticipantConnected) and e.participant_id == "alice" for e in signaling.events
            ),
            15,
            "alice connected through trickled candidates",
        )
    finally:
        await signaling.close()


async def test_peer_hanging_up_is_a_participant_left(relay: Relay) -> None:
    conference = await relay.create_conference("hangup")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", RED, 440))
        await signaling.join(Peer("bob", GREEN, 1000))
        await signaling.wait_for(
            lambda: looks(video_of(signaling, "alice", "bob"), GREEN), 30, "alice seeing bob"
        )
        await signaling.peers["bob"].pc.close()  # DTLS close_notify, no signaling
        await signaling.wait_for(
            lambda: any(
                isinstance(e, ParticipantLeft) and e.participant_id == "bob" for e in signaling.events
            ),
            15,
            "bob's ParticipantLeft after his hang-up",
        )
        assert conference.participant_ids() == ("alice",)
        assert [s for s in conference.streams_for("alice") if s.publisher_id == "bob"] == []
    finally:
        await signaling.close()
