"""The conference hub's decisions, with an in-memory relay and a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from visio_matrix.calls.hub import ConferenceHub
from visio_matrix.calls.hub_api import (
    ConferenceEnded,
    ConferenceStarted,
    HubError,
    HubEvent,
    Identity,
    ParticipantJoined,
    ParticipantRemoved,
    RelayLinkOptions,
    RemovalReason,
    TrackAdded,
)
from visio_matrix.clock import FakeClock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.metrics import Metrics
from visio_matrix.relay.api import (
    Negotiated,
    NegotiationNeeded,
    ParticipantConnected,
    ParticipantFailed,
    PublishedTrack,
    RelayEvent,
    TrackPublished,
)
from visio_matrix.relay.errors import NegotiationError, UnknownConferenceError
from visio_matrix.storage import Store, open_store

ROOM = "!room:hs"


class FakeConference:
    def __init__(self, conference_id: str) -> None:
        self.conference_id = conference_id
        self.members: dict[str, str | None] = {}
        self.roles: dict[str, dict[str, object]] = {}
        self.removed: list[str] = []

    async def add_participant(
        self,
        participant_id: str,
        *,
        offer_sdp: str | None = None,
        mode: str = "sfu",
        metadata: Mapping[str, str] | None = None,
        stream_purposes: Mapping[str, str] | None = None,
        **link_role: object,
    ) -> Negotiated:
        if offer_sdp == "bad":
            raise NegotiationError("no forwardable codec in section 0")
        self.members[participant_id] = offer_sdp
        self.roles[participant_id] = dict(link_role)
        return Negotiated("answer" if offer_sdp else "offer", ())

    async def remove_participant(self, participant_id: str) -> None:
        self.members.pop(participant_id, None)
        self.removed.append(participant_id)


class FakeRelay:
    def __init__(self) -> None:
        self.conferences: dict[str, FakeConference] = {}
        self.closed: list[str] = []

    async def create_conference(self, conference_id: str) -> FakeConference:
        self.conferences[conference_id] = FakeConference(conference_id)
        return self.conferences[conference_id]

    def conference(self, conference_id: str) -> FakeConference:
        if conference_id not in self.conferences:
            raise UnknownConferenceError(conference_id)
        return self.conferences[conference_id]

    async def close_conference(self, conference_id: str) -> None:
        self.conferences.pop(conference_id, None)
        self.closed.append(conference_id)


class Members:
    def __init__(self, *users: str) -> None:
        self.users = set(users)

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return room_id == ROOM and user_id in self.users


class Link:
    def __init__(self) -> None:
        self.offers: list[str] = []
        self.closed_reasons: list[str] = []

    async def send_offer(self, negotiated: Negotiated) -> None:
        self.offers.append(negotiated.sdp)

    async def closed(self, reason: str) -> None:
        self.closed_reasons.append(reason)


class Recorder:
    def __init__(self) -> None:
        self.events: list[HubEvent] = []

    async def on_hub_event(self, event: HubEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[HubEvent]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    await s.close()


class Setup:
    def __init__(self, store: Store, members: Members, policy: PolicyConfig | None = None) -> None:
        self.relay = FakeRelay()
        self.events: asyncio.Queue[RelayEvent] = asyncio.Queue()
        self.clock = FakeClock()
        self.hub = ConferenceHub(
            self.relay,  # type: ignore[arg-type]
            self.events,
            store,
            members,
            policy or PolicyConfig(allowed_servers=("hs",)),
            self.clock,
            Metrics(),
        )
        self.recorder = Recorder()
        self.hub.add_listener(self.recorder)


async def settle() -> None:
    """Let the hub's pump and outboxes run (the store works in a thread: real time is needed)."""
    await asyncio.sleep(0.2)


async def test_join_needs_membership_policy_and_a_conference(store: Store) -> None:
    s = Setup(store, Members("@alice:hs", "@eve:evil"))
    await s.hub.start()
    with pytest.raises(HubError) as caught:
        await s.hub.join(ROOM, Identity("@bob:hs", "B"), Link(), transport="todevice", offer_sdp="o")
    assert caught.value.code == "not_a_member"
    with pytest.raises(HubError) as caught:
        await s.hub.join(ROOM, Identity("@eve:evil", "E"), Link(), transport="todevice", offer_sdp="o")
    assert caught.value.code == "server_not_allowed"
    with pytest.raises(HubError) as caught:
        await s.hub.join(ROOM, Identity("@alice:hs", "A"), Link(), transport="todevice", offer_sdp="o")
    assert caught.value.code == "no_conference"
    assert s.relay.conferences == {}

    joined = await s.hub.join(
        ROOM, Identity("@alice:hs", "A"), Link(), transport="livekit", offer_sdp="o", start_if_none=True
    )
    assert joined.negotiated.sdp == "answer" and joined.participant_id.startswith("PA_")
    assert [type(e) for e in s.recorder.events] == [ConferenceStarted, ParticipantJoined]
    record = await store.get_active_conference(ROOM)
    assert record is not None and record.started_by == "@alice:hs"
    assert [p.user_id for p in await store.list_participants(record.conference_id)] == ["@alice:hs"]
    await s.hub.stop()


async def test_bad_offer_is_a_hub_error_and_leaves_nothing_behind(store: Store) -> None:
    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    with pytest.raises(HubError) as caught:
        await s.hub.join(ROOM, Identity("@alice:hs", "A"), Link(), transport="todevice", offer_sdp="bad")
    assert caught.value.code == "bad_sdp" and "no forwardable codec" in str(caught.value)
    assert s.hub.participants(ROOM) == ()
    await s.hub.stop()


async def test_same_device_joining_again_replaces_the_old_session(store: Store) -> None:
    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    first_link, second_link = Link(), Link()
    first = await s.hub.join(
        ROOM, Identity("@alice:hs", "A"), first_link, transport="todevice", offer_sdp="1"
    )
    second = await s.hub.join(
        ROOM, Identity("@alice:hs", "A"), second_link, transport="todevice", offer_sdp="2"
    )
    await settle()
    assert first_link.closed_reasons == [RemovalReason.REPLACED]
    assert [p.participant_id for p in s.hub.participants(ROOM)] == [second.participant_id]
    assert first.participant_id in next(iter(s.relay.conferences.values())).removed
    await s.hub.stop()


async def test_member_leaving_the_room_is_dropped_and_the_empty_call_ends(store: Store) -> None:
    s = Setup(store, Members("@alice:hs", "@bob:hs"))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    alice, bob = Link(), Link()
    await s.hub.join(ROOM, Identity("@alice:hs", "A"), alice, transport="todevice", offer_sdp="o")
    s.clock.advance(1)
    await s.hub.join(ROOM, Identity("@bob:hs", "B"), bob, transport="dm", offer_sdp="o", mode="mcu")
    record = await store.get_active_conference(ROOM)
    assert record is not None
    for p in s.hub.participants(ROOM):
        await s.events.put(ParticipantConnected(record.conference_id, p.participant_id))
    await settle()
    await s.hub.on_membership(ROOM, "@bob:hs", "join")  # still a member: nothing happens
    assert len(s.hub.participants(ROOM)) == 2
    await s.hub.on_membership(ROOM, "@bob:hs", "leave")
    await settle()
    assert bob.closed_reasons == [RemovalReason.NOT_A_MEMBER]
    assert [p.identity.user_id for p in s.hub.participants(ROOM)] == ["@alice:hs"]
    removed = s.recorder.of(ParticipantRemoved)
    assert len(removed) == 1 and removed[0].reason == RemovalReason.NOT_A_MEMBER  # type: ignore[union-attr]

    s.clock.advance(64)
    await s.hub.on_membership(ROOM, "@alice:hs", "ban")
    await settle()
    ended = s.recorder.of(ConferenceEnded)
    assert len(ended) == 1
    assert ended[0].participants == ("@alice:hs", "@bob:hs")  # type: ignore[union-attr]
    assert ended[0].ended_at_ms - ended[0].started_at_ms == 65_000  # type: ignore[union-attr]
    assert await store.get_active_conference(ROOM) is None
    assert s.relay.closed  # media resources released
    await s.hub.stop()


async def test_relay_events_reach_the_owning_link_and_listeners(store: Store) -> None:
    s = Setup(store, Members("@alice:hs", "@bob:hs"))
    await s.hub.start()
    record = await s.hub.start_conference(ROOM, "@alice:hs")
    alice, bob = Link(), Link()
    a = await s.hub.join(ROOM, Identity("@alice:hs", "A"), alice, transport="todevice", offer_sdp="o")
    b = await s.hub.join(ROOM, Identity("@bob:hs", "B"), bob, transport="todevice", offer_sdp="o")
    track = PublishedTrack(a.participant_id, "t1", "s1", "video", "video/VP8", "m.usermedia", None, None)
    await s.events.put(TrackPublished(record.conference_id, track))
    await s.events.put(NegotiationNeeded(record.conference_id, b.participant_id, "offer-for-bob", ()))
    await s.events.put(ParticipantFailed(record.conference_id, a.participant_id, "ice timeout"))
    await settle()
    assert bob.offers == ["offer-for-bob"] and alice.offers == []
    added = s.recorder.of(TrackAdded)
    assert len(added) == 1 and added[0].owner.identity.user_id == "@alice:hs"  # type: ignore[union-attr]
    assert alice.closed_reasons == [RemovalReason.MEDIA_FAILED]
    assert s.hub.published_tracks(ROOM) == ()  # the failed publisher's track went with it
    await s.hub.stop()


async def test_restart_makes_present_participants_restorable(store: Store) -> None:
    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    await s.hub.join(
        ROOM,
        Identity("@alice:hs", "A"),
        Link(),
        transport="todevice",
        offer_sdp="o",
        transport_data={"call_id": "c1"},
    )
    await s.hub.stop()  # shutdown: participants stay present in the store

    again = Setup(store, Members("@alice:hs"))
    await again.hub.start()
    assert again.hub.take_restorable("dm") == []
    restorable = again.hub.take_restorable("todevice")
    assert [(r.room_id, p.user_id, p.transport_data) for r, p in restorable] == [
        (ROOM, "@alice:hs", {"call_id": "c1"})
    ]
    assert again.hub.take_restorable("todevice") == []  # handed out once
    await again.hub.stop()


async def test_tracks_published_while_joining_are_not_lost(store: Store) -> None:
    """The relay reports a newcomer's tracks before add_participant returns: the hub keeps them."""
    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    record = await s.hub.start_conference(ROOM, "@alice:hs")
    await s.hub.join(ROOM, Identity("@alice:hs", "A0"), Link(), transport="todevice", offer_sdp="o")
    conference = s.relay.conferences[record.conference_id]
    original = conference.add_participant

    async def publishing_add(participant_id: str, **kwargs: object) -> Negotiated:
        track = PublishedTrack(participant_id, "t9", "s9", "audio", "audio/opus", "m.usermedia", None, None)
        await s.events.put(TrackPublished(record.conference_id, track))
        await asyncio.sleep(0.1)  # the relay offers to the others meanwhile: the pump runs
        return await original(participant_id, **kwargs)  # type: ignore[arg-type]

    conference.add_participant = publishing_add  # type: ignore[method-assign]
    joined = await s.hub.join(ROOM, Identity("@alice:hs", "A1"), Link(), transport="todevice", offer_sdp="o")
    await settle()
    tracks = s.hub.published_tracks(ROOM)
    assert [(t.track_id, v.participant_id) for t, v in tracks] == [("t9", joined.participant_id)]
    added = s.recorder.of(TrackAdded)
    joined_at = next(
        i
        for i, e in enumerate(s.recorder.events)
        if isinstance(e, ParticipantJoined) and e.participant.participant_id == joined.participant_id
    )  # type: ignore[union-attr]
    assert (
        len(added) == 1 and s.recorder.events.index(added[0]) > joined_at
    )  # announced after the participant
    await s.hub.stop()


async def test_a_call_nobody_was_really_in_does_not_end_by_itself(store: Store) -> None:
    """A declined ring (joined, never connected, then gone) leaves a started call running."""
    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    ring = await s.hub.join(ROOM, Identity("@alice:hs", "dm:1"), Link(), transport="dm", mode="mcu")
    await s.hub.leave(ring.participant_id)
    await settle()
    assert await store.get_active_conference(ROOM) is not None
    assert s.recorder.of(ConferenceEnded) == []
    await s.hub.stop()


async def test_session_key_lets_one_device_hold_two_livekit_connections(store: Store) -> None:
    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    me = Identity("@alice:hs", "PHONE")
    subscribe, publish, again = Link(), Link(), Link()
    await s.hub.join(ROOM, me, subscribe, transport="livekit", offer_sdp="o", session_key="livekit:hashed")
    await s.hub.join(
        ROOM, me, publish, transport="livekit", offer_sdp="o", session_key="livekit:@alice:hs:PHONE"
    )
    assert len(s.hub.participants(ROOM)) == 2  # different LiveKit identities: both stay
    await s.hub.join(ROOM, me, again, transport="livekit", offer_sdp="o", session_key="livekit:hashed")
    await settle()
    assert subscribe.closed_reasons == [RemovalReason.REPLACED] and publish.closed_reasons == []
    assert len(s.hub.participants(ROOM)) == 2
    await s.hub.stop()


# ---- federation links (calls/federation.py drives these) -----------------------------------------

PEER_BOT = Identity("@visio:other", "PEERDEV")


async def test_a_relay_link_joins_with_the_link_role_outside_allowed_servers(store: Store) -> None:
    """The peer bot is not one of our users: no server policy check, but it must be in the room."""
    s = Setup(store, Members("@alice:hs", PEER_BOT.user_id))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    options = RelayLinkOptions(
        "other", allow_onward=False, onward_ok=True, stream_owners={"s": {"user_id": "@u:other"}}
    )
    joined = await s.hub.join(
        ROOM,
        PEER_BOT,
        Link(),
        transport="federation",
        offer_sdp="o",
        mode="sfu_answer_only",
        relay_link=options,
    )
    conference = next(iter(s.relay.conferences.values()))
    assert conference.roles[joined.participant_id] == {
        "link": True,
        "allow_onward": False,
        "onward_ok": True,
        "stream_owners": {"s": {"user_id": "@u:other"}},
    }
    view = s.hub.participant(joined.participant_id)
    assert view is not None and view.link_server == "other"
    assert s.hub.local_participants(ROOM) == ()
    with pytest.raises(HubError) as caught:  # a user of that server still cannot join here
        await s.hub.join(ROOM, Identity("@u:other", "U"), Link(), transport="todevice", offer_sdp="o")
    assert caught.value.code == "server_not_allowed"
    s2 = Setup(store, Members("@alice:hs"))  # the peer bot is not in the room: refused
    await s2.hub.start()
    with pytest.raises(HubError) as caught:
        await s2.hub.join(ROOM, PEER_BOT, Link(), transport="federation", offer_sdp="o", relay_link=options)
    assert caught.value.code == "not_a_member"
    await s.hub.stop()
    await s2.hub.stop()


async def test_max_participants_counts_the_far_side(store: Store) -> None:
    policy = PolicyConfig(allowed_servers=("hs",), max_participants=3)
    s = Setup(store, Members("@alice:hs", "@bob:hs", "@carol:hs", PEER_BOT.user_id), policy)
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    await s.hub.join(ROOM, Identity("@alice:hs", "A"), Link(), transport="todevice", offer_sdp="o")
    await s.hub.join(  # the link itself does not count
        ROOM, PEER_BOT, Link(), transport="federation", offer_sdp="o", relay_link=RelayLinkOptions("other")
    )
    await s.hub.set_remote_participants(ROOM, "other", (Identity("@u:other", "U"),))
    await s.hub.join(ROOM, Identity("@bob:hs", "B"), Link(), transport="todevice", offer_sdp="o")
    with pytest.raises(HubError) as caught:
        await s.hub.join(ROOM, Identity("@carol:hs", "C"), Link(), transport="todevice", offer_sdp="o")
    assert caught.value.code == "conference_full" and "3" in str(caught.value)
    await s.hub.set_remote_participants(ROOM, "other", ())
    await s.hub.join(ROOM, Identity("@carol:hs", "C"), Link(), transport="todevice", offer_sdp="o")
    await s.hub.stop()


async def test_the_call_goes_on_while_the_far_side_has_people(store: Store) -> None:
    s = Setup(store, Members("@alice:hs", PEER_BOT.user_id))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    alice = await s.hub.join(ROOM, Identity("@alice:hs", "A"), Link(), transport="todevice", offer_sdp="o")
    link = await s.hub.join(
        ROOM, PEER_BOT, Link(), transport="federation", offer_sdp="o", relay_link=RelayLinkOptions("other")
    )
    conference_id = alice.conference_id
    await s.events.put(ParticipantConnected(conference_id, link.participant_id))
    await s.events.put(ParticipantConnected(conference_id, alice.participant_id))
    await settle()
    await s.hub.set_remote_participants(ROOM, "other", (Identity("@u:other", "U"),))
    await s.hub.leave(alice.participant_id)
    assert await store.get_active_conference(ROOM) is not None  # @u:other is still in, over the link
    assert s.hub.remote_participants(ROOM) == {"other": (Identity("@u:other", "U"),)}
    await s.hub.set_remote_participants(ROOM, "other", ())  # and now nobody anywhere: it ends
    assert await store.get_active_conference(ROOM) is None
    assert s.recorder.of(ConferenceEnded)
    await s.hub.stop()


async def test_only_a_linked_call_nobody_was_in_does_not_end(store: Store) -> None:
    """A link connecting is not someone being in the call."""
    s = Setup(store, Members("@alice:hs", PEER_BOT.user_id))
    await s.hub.start()
    await s.hub.start_conference(ROOM, "@alice:hs")
    link = await s.hub.join(
        ROOM, PEER_BOT, Link(), transport="federation", offer_sdp="o", relay_link=RelayLinkOptions("other")
    )
    await s.events.put(ParticipantConnected(link.conference_id, link.participant_id))
    await settle()
    await s.hub.leave(link.participant_id)
    assert await store.get_active_conference(ROOM) is not None
    await s.hub.stop()
