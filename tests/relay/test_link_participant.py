"""Relay-to-relay link participants (federation, issue 5) with real aiortc peers.

A "link" peer stands for the far ministry's relay: one connection publishing several far-side
users' streams (labelled by ``stream_owners``) and receiving each local publisher once.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from aiortc.mediastreams import AudioStreamTrack

from visio_matrix.relay import ActiveSpeakerChanged, Conference, NegotiationNeeded, Relay, TrackPublished
from visio_matrix.relay.errors import InvalidLinkError, UnknownParticipantError
from visio_matrix.relay.links import check_owners

from .peers import ColorVideoTrack, Peer, Received, Signaling, ToneAudioTrack

pytestmark = pytest.mark.media

RED, BLUE, GREEN, YELLOW = (230, 20, 20), (20, 20, 230), (20, 230, 20), (230, 230, 20)
U1 = {"user_id": "@u1:b.example", "device_id": "U1DEV"}
U2 = {"user_id": "@u2:b.example", "device_id": "U2DEV"}
U3 = {"user_id": "@u3:c.example", "device_id": "U3DEV"}
BOT_B = {"user_id": "@visio:b.example", "device_id": "BOTDEV"}


def link_peer(name: str, users: list[tuple[str, tuple[int, int, int], float]]) -> Peer:
    """A peer publishing one audio + video msid stream per far-side user (stream id, colour, tone)."""
    peer = Peer(name, None, None)
    for stream_id, rgb, tone in users:
        for track in (ToneAudioTrack(tone), ColorVideoTrack(rgb)):
            peer.pc.addTrack(track)._stream_id = stream_id  # one msid stream per remote user
    return peer


async def join_link_offering(
    signaling: Signaling,
    peer: Peer,
    owners: Mapping[str, Mapping[str, str]],
    allow_onward: bool = False,
) -> None:
    """The link offers its streams, the relay answers (like ``Signaling.join`` with the link role)."""
    signaling.peers[peer.name] = peer
    negotiated = await signaling.conference.add_participant(
        peer.name,
        offer_sdp=await peer.offer(),
        metadata=BOT_B,
        link=True,
        allow_onward=allow_onward,
        stream_owners=owners,
    )
    await peer.accept(negotiated.sdp)


def decoded(record: Received | None, rgb: tuple[int, int, int] | None, tone: float | None) -> bool:
    """``record`` shows the expected colour (video) or tone (audio)."""
    if record is None or record.frames < 10:
        return False
    if rgb is not None:
        return record.colour_close_to(rgb)
    assert tone is not None
    return len(record.audio) >= 50 and abs(record.dominant_frequency() - tone) < 30


def negotiations(signaling: Signaling, participant_id: str) -> int:
    return sum(
        1 for e in signaling.events if isinstance(e, NegotiationNeeded) and e.participant_id == participant_id
    )


async def test_local_subscriber_sees_each_remote_user_as_owner(relay: Relay) -> None:
    """(a) One link carrying two far-side users: a local subscriber gets 4 tracks, each named after
    its remote user/device, with that user's colour and tone."""
    conference = await relay.create_conference("link-owners")
    signaling = Signaling(relay, conference)
    try:
        expected = {U1["user_id"]: (RED, 440.0), U2["user_id"]: (BLUE, 1000.0)}
        peer = link_peer("link-b", [("u1-stream", RED, 440.0), ("u2-stream", BLUE, 1000.0)])
        await join_link_offering(signaling, peer, {"u1-stream": U1, "u2-stream": U2})
        bob = Peer("bob", None, None)
        await signaling.join_relay_offers(bob)

        streams = conference.streams_for("bob")
        assert len(streams) == 4
        assert all(s.publisher_id == "link-b" for s in streams)
        by_owner = {(s.publisher_metadata["user_id"], s.kind): s for s in streams}
        assert set(by_owner) == {(u, k) for u in expected for k in ("audio", "video")}
        for (user, _), s in by_owner.items():
            assert dict(s.publisher_metadata) == (U1 if user == U1["user_id"] else U2)
        # the two users' streams stay apart (one msid stream each), audio and video of a user together
        assert by_owner[(U1["user_id"], "audio")].stream_id == by_owner[(U1["user_id"], "video")].stream_id
        assert by_owner[(U1["user_id"], "audio")].stream_id != by_owner[(U2["user_id"], "audio")].stream_id
        owners = {(t.origin_stream_id, t.kind): t.owner for t in conference.published_tracks()}
        assert owners == {
            ("u1-stream", "audio"): U1,
            ("u1-stream", "video"): U1,
            ("u2-stream", "audio"): U2,
            ("u2-stream", "video"): U2,
        }
        published = [e.track for e in signaling.events if isinstance(e, TrackPublished)]
        assert sorted(t.owner["user_id"] for t in published if t.owner) == sorted(2 * list(expected))

        def all_decoded() -> bool:
            return all(
                decoded(
                    bob.received.get(s.track_id),
                    expected[user][0] if kind == "video" else None,
                    expected[user][1] if kind == "audio" else None,
                )
                for (user, kind), s in by_owner.items()
            )

        await signaling.wait_for(all_decoded, 30, "bob decoding both remote users' colour and tone")
        assert conference.streams_for("link-b") == ()  # bob publishes nothing
    finally:
        await signaling.close()


async def test_link_receives_each_local_publisher_once(relay: Relay) -> None:
    """(b) The link gets the local publisher's 2 tracks once; 3 more local subscribers change nothing
    for it. Its own far-side stream, owned per accept_answer's stream_owners, reaches them all."""
    conference = await relay.create_conference("link-once")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", GREEN, 600.0))
        link = link_peer("link-b", [("u1-stream", RED, 440.0)])
        signaling.peers["link-b"] = link
        negotiated = await conference.add_participant("link-b", metadata=BOT_B, link=True)
        await conference.accept_answer(
            "link-b", await link.answer(negotiated.sdp), stream_owners={"u1-stream": U1}
        )

        before = conference.streams_for("link-b")
        assert sorted((s.publisher_id, s.kind) for s in before) == [("alice", "audio"), ("alice", "video")]
        by_kind = {s.kind: s for s in before}
        await signaling.wait_for(
            lambda: (
                decoded(link.received.get(by_kind["video"].track_id), GREEN, None)
                and decoded(link.received.get(by_kind["audio"].track_id), None, 600.0)
            ),
            30,
            "the link decoding alice's colour and tone",
        )
        link_negotiations = negotiations(signaling, "link-b")
        link_transceivers = len(link.pc.getTransceivers())

        subscribers = [Peer(f"sub{i}", None, None) for i in range(3)]
        for sub in subscribers:
            await signaling.join_relay_offers(sub)
        for sub in subscribers:
            streams = conference.streams_for(sub.name)
            assert sorted((s.publisher_id, s.kind) for s in streams) == [
                ("alice", "audio"),
                ("alice", "video"),
                ("link-b", "audio"),
                ("link-b", "video"),
            ]
            assert all(dict(s.publisher_metadata) == U1 for s in streams if s.publisher_id == "link-b")
            video = next(s for s in streams if s.publisher_id == "link-b" and s.kind == "video")
            await signaling.wait_for(
                lambda sub=sub, video=video: decoded(sub.received.get(video.track_id), RED, None),
                30,
                f"{sub.name} decoding the remote user's colour",
            )

        assert conference.streams_for("link-b") == before
        assert negotiations(signaling, "link-b") == link_negotiations  # nothing new offered to the link
        assert len(link.pc.getTransceivers()) == link_transceivers
        assert set(link.received) == {s.track_id for s in before}
        # on the relay: each of alice's up tracks has exactly one down track toward the link
        link_p = conference._participants["link-b"]
        alice_ups = list(conference._participants["alice"].ups.values())
        assert len(link_p.downs) == 2 and set(link_p.downs) == set(alice_ups)
        for up in alice_ups:
            assert len(up.downs) == 4  # the link + 3 subscribers
            assert sum(1 for d in up.downs if d is link_p.downs[up]) == 1
    finally:
        await signaling.close()


async def test_links_do_not_relay_onward_unless_allowed(relay: Relay) -> None:
    """(c) L1 and L2 get the local publisher only; L3 (allow_onward) also gets L1's and L2's streams,
    still named after their owners; L1 and L2 never get L3's."""
    conference = await relay.create_conference("link-onward")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", GREEN, 600.0))
        l1 = link_peer("l1", [("u1-stream", RED, 440.0)])
        l2 = link_peer("l2", [("u2-stream", BLUE, 1000.0)])
        await join_link_offering(signaling, l1, {"u1-stream": U1})
        await join_link_offering(signaling, l2, {"u2-stream": U2})

        def publishers(pid: str) -> list[tuple[str, str]]:
            return sorted((s.publisher_id, s.kind) for s in conference.streams_for(pid))

        alice_only = [("alice", "audio"), ("alice", "video")]
        assert publishers("l1") == alice_only
        assert publishers("l2") == alice_only
        assert publishers("alice") == [("l1", "audio"), ("l1", "video"), ("l2", "audio"), ("l2", "video")]

        l3 = link_peer("l3", [("u3-stream", YELLOW, 1500.0)])
        await join_link_offering(signaling, l3, {"u3-stream": U3}, allow_onward=True)
        assert publishers("l1") == alice_only
        assert publishers("l2") == alice_only
        assert publishers("l3") == [
            *alice_only,
            ("l1", "audio"),
            ("l1", "video"),
            ("l2", "audio"),
            ("l2", "video"),
        ]
        owners = {s.publisher_id: dict(s.publisher_metadata) for s in conference.streams_for("l3")}
        assert owners == {"alice": {}, "l1": U1, "l2": U2}

        def l3_decodes(pid: str, rgb: tuple[int, int, int]) -> bool:
            return any(
                decoded(l3.received.get(s.track_id), rgb, None)
                for s in conference.streams_for("l3")
                if s.publisher_id == pid and s.kind == "video"
            )

        await signaling.wait_for(
            lambda: l3_decodes("l1", RED) and l3_decodes("l2", BLUE) and l3_decodes("alice", GREEN),
            30,
            "the onward link decoding L1's, L2's and alice's colours",
        )
        assert not any(s.publisher_id == "l3" for pid in ("l1", "l2") for s in conference.streams_for(pid))
    finally:
        await signaling.close()


async def test_onward_needs_the_publishing_link_to_permit_it(relay: Relay) -> None:
    """(c2) L3 allows onward relaying, but L1 was added with onward_ok=False: L3 gets L2's streams
    (and the local publisher's), never L1's; L1's still reach local participants."""
    conference = await relay.create_conference("link-onward-ok")
    signaling = Signaling(relay, conference)
    try:
        alice = Peer("alice", GREEN, 600.0)
        await signaling.join(alice)
        l1 = link_peer("l1", [("u1-stream", RED, 440.0)])
        signaling.peers["l1"] = l1
        negotiated = await conference.add_participant(
            "l1",
            offer_sdp=await l1.offer(),
            metadata=BOT_B,
            link=True,
            onward_ok=False,
            stream_owners={"u1-stream": U1},
        )
        await l1.accept(negotiated.sdp)
        l2 = link_peer("l2", [("u2-stream", BLUE, 1000.0)])
        await join_link_offering(signaling, l2, {"u2-stream": U2})
        l3 = link_peer("l3", [("u3-stream", YELLOW, 1500.0)])
        await join_link_offering(signaling, l3, {"u3-stream": U3}, allow_onward=True)

        def publishers(pid: str) -> list[tuple[str, str]]:
            return sorted((s.publisher_id, s.kind) for s in conference.streams_for(pid))

        assert publishers("l3") == [("alice", "audio"), ("alice", "video"), ("l2", "audio"), ("l2", "video")]
        assert ("l1", "video") in publishers("alice")
        video = next(s for s in conference.streams_for("l3") if s.publisher_id == "l2" and s.kind == "video")
        await signaling.wait_for(
            lambda: decoded(l3.received.get(video.track_id), BLUE, None), 30, "L3 decoding L2's colour"
        )
        with pytest.raises(InvalidLinkError, match="onward_ok=False needs link=True"):
            await conference.add_participant("x", onward_ok=False)
    finally:
        await signaling.close()


async def test_the_speaker_on_a_link_is_its_far_side_user(relay: Relay) -> None:
    """One link carrying two far-side users, one playing a loud tone, the other silence: the active
    speaker is the link AND that user (``owner``), never the silent one."""
    conference = await relay.create_conference("link-speaker")
    signaling = Signaling(relay, conference)
    try:
        peer = Peer("link-b", None, None)
        peer.pc.addTrack(ToneAudioTrack(440.0))._stream_id = "u1-stream"
        peer.pc.addTrack(AudioStreamTrack())._stream_id = "u2-stream"  # silence
        await join_link_offering(signaling, peer, {"u1-stream": U1, "u2-stream": U2})

        def changes() -> list[ActiveSpeakerChanged]:
            return [e for e in signaling.events if isinstance(e, ActiveSpeakerChanged)]

        await signaling.wait_for(lambda: bool(changes()), 15, "an active speaker")
        first = changes()[0]
        assert first.participant_id == "link-b" and dict(first.owner or {}) == U1
        assert all(dict(e.owner or {}) != U2 for e in changes())
    finally:
        await signaling.close()


async def test_normal_participants_unchanged(relay: Relay) -> None:
    """(d) Normal participants still receive everyone (links included) under their own metadata."""
    conference = await relay.create_conference("link-normal")
    signaling = Signaling(relay, conference)
    try:
        alice, bob = Peer("alice", GREEN, 600.0), Peer("bob", BLUE, 1000.0)
        signaling.peers["alice"] = alice
        negotiated = await conference.add_participant(
            "alice", offer_sdp=await alice.offer(), metadata={"user_id": "@alice:a.example"}
        )
        await alice.accept(negotiated.sdp)
        await signaling.join(bob)
        await join_link_offering(
            signaling, link_peer("link-b", [("u1-stream", RED, 440.0)]), {"u1-stream": U1}
        )

        alice_streams = conference.streams_for("alice")
        assert sorted((s.publisher_id, s.kind) for s in alice_streams) == [
            ("bob", "audio"),
            ("bob", "video"),
            ("link-b", "audio"),
            ("link-b", "video"),
        ]
        assert all(s.publisher_metadata == {} for s in alice_streams if s.publisher_id == "bob")
        bob_from_alice = [s for s in conference.streams_for("bob") if s.publisher_id == "alice"]
        assert len(bob_from_alice) == 2
        assert all(dict(s.publisher_metadata) == {"user_id": "@alice:a.example"} for s in bob_from_alice)
        assert all(t.owner is None for t in conference.published_tracks() if t.participant_id != "link-b")
        video = next(s for s in bob_from_alice if s.kind == "video")
        await signaling.wait_for(
            lambda: decoded(bob.received.get(video.track_id), GREEN, None), 30, "bob decoding alice's colour"
        )
    finally:
        await signaling.close()


async def test_bad_link_options_are_refused_and_change_nothing(relay: Relay) -> None:
    conference: Conference = await relay.create_conference("link-bad")
    signaling = Signaling(relay, conference)
    try:
        bad_calls: list[dict[str, object]] = [
            {"stream_owners": {"s": U1}},  # owners on a non-link
            {"allow_onward": True},  # onward without link
            {"link": True, "mode": "mcu"},
            {"link": True, "stream_owners": {"s": {"device_id": "X"}}},  # no user_id
            {"link": True, "stream_owners": {"s": {"user_id": 5}}},
            {"link": True, "stream_owners": {"": U1}},
            {"link": True, "stream_owners": {"s": "@u1:b.example"}},
            {"link": True, "stream_owners": {"s": {"user_id": "@" + "x" * 300}}},
        ]
        for kwargs in bad_calls:
            with pytest.raises(InvalidLinkError):
                await conference.add_participant("x", **kwargs)  # type: ignore[arg-type]
            assert conference.participant_ids() == ()
        with pytest.raises(UnknownParticipantError):
            conference.streams_for("x")

        alice = Peer("alice", GREEN, 600.0)
        await signaling.join(alice)
        with pytest.raises(InvalidLinkError, match="only for link participants"):
            await conference.apply_offer("alice", "v=0", stream_owners={"s": U1})
        assert conference._participants["alice"].stream_owners == {}
        assert conference._participants["alice"].signaling_state == "stable"
        assert check_owners("l", True, {"s": {"user_id": "@u:x", "device_id": "D"}}) == {
            "s": {"user_id": "@u:x", "device_id": "D"}
        }
        assert check_owners("l", True, None) == {}
    finally:
        await signaling.close()
