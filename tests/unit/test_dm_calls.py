"""The 1:1 DM call transport with in-memory fakes of the hub and the bot's room I/O, and a real SQLite store.

Checks the spec points the shell is responsible for (answer content, reject/hangup reasons, candidates
including end-of-candidates, renegotiation, select_answer, ring lifetime, glare, expired invites,
hostile content) and the product rules (conference choice, `!visio join` / `!visio ring`, DMs).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from visio_matrix.appservice.events import RoomEvent
from visio_matrix.calls.commands import Command, parse_command
from visio_matrix.calls.direct_rooms import DirectRooms, dm_partner, memberships
from visio_matrix.calls.dm_calls import DmCalls
from visio_matrix.calls.dm_choice import ConferenceChoices
from visio_matrix.calls.hub_api import (
    HubError,
    HubListener,
    Identity,
    Joined,
    ParticipantLink,
    ParticipantView,
    RemovalReason,
    TransportName,
)
from visio_matrix.calls.room_bot import RoomBot
from visio_matrix.clock import FakeClock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.metrics import Metrics
from visio_matrix.relay.api import Negotiated, ParticipantMode, PublishedTrack, StreamInfo
from visio_matrix.storage import ParticipantRecord, Store, open_store

BOT = "@visio:hs"
ALICE, BOB, CAROL, DAVE = "@alice:hs", "@bob:hs", "@carol:hs", "@dave:hs"
ROOM_A, ROOM_B = "!roomA:hs", "!roomB:hs"
DM_ALICE, DM_BOB = "!dm-alice:hs", "!dm-bob:hs"
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def member(user_id: str, membership: str = "join") -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "state_key": user_id,
        "sender": user_id,
        "content": {"membership": membership},
    }


class FakeRooms:
    """The bot's Matrix side: room state per room, events sent, DMs created, aliases."""

    user_id = BOT

    def __init__(self) -> None:
        self.state: dict[str, list[dict[str, Any]]] = {}
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.created: list[str] = []
        self.aliases: dict[str, str] = {}

    def set_members(self, room_id: str, members: Mapping[str, str], creator: str | None = None) -> None:
        events = [member(u, m) for u, m in members.items()]
        events.append({"type": "m.room.create", "sender": creator or BOT, "content": {"room_version": "12"}})
        events.append({"type": "m.room.power_levels", "sender": creator or BOT, "content": {}})
        self.state[room_id] = events

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str:
        self.sent.append((room_id, event_type, content))
        return f"$sent{len(self.sent)}"

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        if room_id not in self.state:
            raise RuntimeError(f"bot not in {room_id}")
        return self.state[room_id]

    async def create_direct_room(self, invitee: str, name: str) -> str:
        room_id = f"!dm-new-{len(self.created)}:hs"
        self.created.append(invitee)
        self.set_members(room_id, {BOT: "join", invitee: "invite"})
        return room_id

    async def resolve_alias(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def two_member_rooms(self, user_id: str) -> list[str]:
        return [r for r, state in self.state.items() if set(memberships(state)) == {BOT, user_id}]

    def events(self, event_type: str, room_id: str | None = None) -> list[dict[str, Any]]:
        return [c for r, t, c in self.sent if t == event_type and (room_id is None or r == room_id)]

    def notices(self, room_id: str) -> list[str]:
        return [c["body"] for c in self.events("m.room.message", room_id)]


class FakeHub:
    """Records every hub call; ``refuse`` makes the next joins fail with that HubError."""

    def __init__(self) -> None:
        self.joins: list[dict[str, Any]] = []
        self.links: dict[str, ParticipantLink] = {}
        self.views: dict[str, ParticipantView] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: HubError | None = None
        self._ids = itertools.count(1)

    async def join(
        self,
        room_id: str,
        identity: Identity,
        link: ParticipantLink,
        *,
        transport: TransportName,
        offer_sdp: str | None = None,
        mode: ParticipantMode = "sfu",
        stream_purposes: Mapping[str, str] | None = None,
        start_if_none: bool = False,
        transport_data: Mapping[str, str] | None = None,
    ) -> Joined:
        if self.refuse is not None:
            raise self.refuse
        pid = f"PA_{next(self._ids)}"
        self.joins.append(
            {
                "pid": pid,
                "room_id": room_id,
                "identity": identity,
                "transport": transport,
                "offer_sdp": offer_sdp,
                "mode": mode,
                "transport_data": dict(transport_data or {}),
            }
        )
        self.links[pid] = link
        self.views[pid] = ParticipantView(pid, "conf", room_id, identity, transport, 0, False)
        sdp = "relay-answer" if offer_sdp else f"relay-offer-{pid}"
        streams = (
            StreamInfo("mix", "mix-a", "0", "audio", "m.usermedia", "mcu", "a"),
            StreamInfo("mix", "mix-v", "1", "video", "m.usermedia", "mcu", "v"),
        )
        return Joined(pid, "conf", room_id, Negotiated(sdp, streams))

    async def apply_offer(
        self, participant_id: str, offer_sdp: str, stream_purposes: Mapping[str, str] | None = None
    ) -> Negotiated:
        self.calls.append(("apply_offer", participant_id, offer_sdp))
        return Negotiated("relay-reanswer", ())

    async def accept_answer(self, participant_id: str, answer_sdp: str) -> None:
        self.calls.append(("accept_answer", participant_id, answer_sdp))

    async def add_ice_candidate(
        self,
        participant_id: str,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        self.calls.append(("candidate", participant_id, candidate, sdp_mid, sdp_mline_index))

    async def leave(self, participant_id: str, reason: str = RemovalReason.LEFT) -> None:
        self.calls.append(("leave", participant_id, reason))
        self.views.pop(participant_id, None)

    def participant(self, participant_id: str) -> ParticipantView | None:
        return self.views.get(participant_id)

    def participants(self, room_id: str) -> tuple[ParticipantView, ...]:
        return tuple(v for v in self.views.values() if v.room_id == room_id)

    def published_tracks(self, room_id: str) -> tuple[tuple[PublishedTrack, ParticipantView], ...]:
        return ()

    def add_listener(self, listener: HubListener) -> None:
        pass

    def made(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    await s.close()


class World:
    def __init__(self, store: Store, start_power_level: int = 0) -> None:
        self.store = store
        self.rooms = FakeRooms()
        self.hub = FakeHub()
        self.clock = FakeClock()
        policy = PolicyConfig(allowed_servers=("hs",), start_power_level=start_power_level)
        self.calls = DmCalls(self.rooms, self.hub, store, policy, self.clock)
        self.rooms.set_members(DM_ALICE, {BOT: "join", ALICE: "join"}, creator=ALICE)
        self.rooms.set_members(DM_BOB, {BOT: "join", BOB: "join"}, creator=BOB)
        self.rooms.set_members(ROOM_A, {BOT: "join", ALICE: "join", BOB: "join"}, creator=ALICE)
        self.rooms.set_members(ROOM_B, {BOT: "join", ALICE: "join"}, creator=ALICE)
        self._n = itertools.count(1)

    async def conference(self, room_id: str) -> None:
        await self.store.create_conference(room_id, ALICE, self.clock.wall_ms())

    def event(
        self, room_id: str, sender: str, event_type: str, content: dict[str, Any], age_ms: int = 50
    ) -> RoomEvent:
        return RoomEvent(
            f"$e{next(self._n)}",
            room_id,
            sender,
            event_type,
            content,
            self.clock.wall_ms() - age_ms,
            unsigned={"age": age_ms},
        )

    async def deliver(
        self, room_id: str, sender: str, event_type: str, content: dict[str, Any], age_ms: int = 50
    ) -> RoomEvent:
        event = self.event(room_id, sender, event_type, content, age_ms)
        await self.calls.on_call_event(event, event_type, content)
        return event

    async def command(self, room_id: str, sender: str, body: str) -> tuple[str, str]:
        command = parse_command(body)
        assert command is not None
        return await self.calls.on_command(
            self.event(room_id, sender, "m.room.message", {"body": body}), command
        )


def invite(
    call_id: str = "call1", party_id: str = "ALICEDEV", lifetime: int = 60_000, **extra: Any
) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "party_id": party_id,
        "version": "1",
        "lifetime": lifetime,
        "offer": {"type": "offer", "sdp": OFFER},
        **extra,
    }


def common(call_id: str = "call1", party_id: str = "ALICEDEV") -> dict[str, Any]:
    return {"call_id": call_id, "party_id": party_id, "version": "1"}


# ---- incoming calls ---------------------------------------------------------------------------------


async def test_incoming_call_joins_the_only_active_conference_and_answers(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite(invitee=BOT))

    [join] = w.hub.joins
    assert join["room_id"] == ROOM_A
    assert join["identity"] == Identity(ALICE, "dm:ALICEDEV")
    assert (join["transport"], join["mode"], join["offer_sdp"]) == ("dm", "mcu", OFFER)
    assert join["transport_data"] == {
        "dm_room_id": DM_ALICE,
        "call_id": "call1",
        "party_id": w.calls.party_id,
    }
    [answer] = w.rooms.events("m.call.answer", DM_ALICE)
    assert answer["call_id"] == "call1" and answer["version"] == "1"
    assert answer["party_id"] == w.calls.party_id and len(answer["party_id"]) == 8
    assert answer["answer"] == {"type": "answer", "sdp": "relay-answer"}
    assert answer["sdp_stream_metadata"]["mix"]["purpose"] == "m.usermedia"
    # The relay's SDP holds all its candidates: only the spec's end-of-candidates follows.
    [candidates] = w.rooms.events("m.call.candidates", DM_ALICE)
    assert candidates["candidates"] == [{"candidate": ""}]
    assert await store.get_state(f"dm.{ALICE}") == DM_ALICE


async def test_remote_candidates_and_end_of_candidates_reach_the_hub(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    entries = [
        {
            "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        },
        {"candidate": ""},  # the spec's end-of-candidates (no sdpMid / sdpMLineIndex)
    ]
    await w.deliver(DM_ALICE, ALICE, "m.call.candidates", {**common(), "candidates": entries})
    assert w.hub.made("candidate") == [
        ("candidate", "PA_1", entries[0]["candidate"], "0", 0),
        ("candidate", "PA_1", None, None, None),
    ]


async def test_hangup_from_the_caller_leaves_the_hub(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    await w.deliver(DM_ALICE, ALICE, "m.call.hangup", {**common(), "reason": "user_hangup"})
    assert w.hub.made("leave") == [("leave", "PA_1", RemovalReason.LEFT)]
    assert w.calls.active_calls() == []
    assert w.rooms.events("m.call.hangup") == []  # the caller ended it: nothing to send back


async def test_caller_leaving_the_dm_ends_the_call(store: Store) -> None:
    """Spec "behaviour on room leave": leaving the room counts as a hangup."""
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    await w.calls.on_membership(ROOM_A, ALICE, "leave")  # another room: this call goes on
    await w.calls.on_membership(DM_ALICE, ALICE, "join")
    assert w.hub.made("leave") == []
    await w.calls.on_membership(DM_ALICE, ALICE, "leave")
    assert w.hub.made("leave") == [("leave", "PA_1", RemovalReason.LEFT)]
    assert w.calls.active_calls() == []


async def test_no_conference_rejects_with_a_notice(store: Store) -> None:
    w = World(store)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    assert w.hub.joins == []
    [reject] = w.rooms.events("m.call.reject", DM_ALICE)
    assert (
        reject["call_id"] == "call1" and reject["version"] == "1" and reject["party_id"] == w.calls.party_id
    )
    assert reject["io.visio.reason"] == "no_conference"
    assert "!visio join" in w.rooms.notices(DM_ALICE)[0]
    assert w.rooms.events("m.call.answer") == []


async def test_two_active_conferences_need_a_choice(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.conference(ROOM_B)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    assert w.hub.joins == [] and w.rooms.events("m.call.reject")[0]["io.visio.reason"] == "no_conference"

    # "!visio join <room>" in the DM picks ROOM_B (and rings her there); her next call goes to ROOM_B.
    text, result = await w.command(DM_ALICE, ALICE, f"!visio join {ROOM_B}")
    assert result == "ok" and "ringing" in text
    ring = w.rooms.events("m.call.invite", DM_ALICE)[0]
    await w.deliver(DM_ALICE, ALICE, "m.call.reject", common(ring["call_id"], "ALICEDEV"))
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite("call2"))
    assert [j["room_id"] for j in w.hub.joins] == [ROOM_B, ROOM_B]
    assert w.rooms.events("m.call.answer", DM_ALICE)[0]["call_id"] == "call2"


async def test_hub_refusal_rejects_with_its_reason(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    w.hub.refuse = HubError("not_a_member", "Only members of the room can join its call.")
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    [reject] = w.rooms.events("m.call.reject", DM_ALICE)
    assert reject["io.visio.reason"] == "not_a_member"
    assert reject["io.visio.message"] == "Only members of the room can join its call."
    assert "could not put you in the call" in w.rooms.notices(DM_ALICE)[0]


async def test_expired_and_duplicate_invites_are_ignored(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    # Replayed after a restart: older than its lifetime -> no answer at all (spec: ignore it).
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite("old", lifetime=60_000), age_ms=61_000)
    assert w.hub.joins == [] and w.rooms.sent == []
    event = await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite("new"))
    await w.calls.on_call_event(event, "m.call.invite", event.content)  # the same event again
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite("new"))  # same call id, new event
    assert len(w.hub.joins) == 1 and len(w.rooms.events("m.call.answer")) == 1


async def test_invite_outside_a_dm_is_not_taken(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(ROOM_A, ALICE, "m.call.invite", invite())  # a group room, no invitee: not for the bot
    assert w.rooms.sent == []
    await w.deliver(ROOM_A, ALICE, "m.call.invite", invite("c2", invitee=BOT))
    assert w.hub.joins == [] and "direct chat" in w.rooms.notices(ROOM_A)[0]


async def test_caller_selecting_another_answer_ends_our_side_silently(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    sent = len(w.rooms.sent)
    await w.deliver(DM_ALICE, ALICE, "m.call.select_answer", {**common(), "selected_party_id": "OTHER"})
    assert w.hub.made("leave") == [("leave", "PA_1", RemovalReason.LEFT)]
    assert len(w.rooms.sent) == sent  # spec: "It does not send any events"


async def test_renegotiation_both_ways(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    # The caller re-offers: the relay answers, the bot sends a negotiate answer.
    await w.deliver(
        DM_ALICE,
        ALICE,
        "m.call.negotiate",
        {**common(), "lifetime": 10_000, "description": {"type": "offer", "sdp": OFFER}},
    )
    assert w.hub.made("apply_offer") == [("apply_offer", "PA_1", OFFER)]
    [reanswer] = w.rooms.events("m.call.negotiate", DM_ALICE)
    assert reanswer["description"] == {"type": "answer", "sdp": "relay-reanswer"}
    # The relay offers (not expected for MCU, handled anyway): negotiate offer, then her answer is applied.
    await w.hub.links["PA_1"].send_offer(Negotiated("relay-new-offer", ()))
    offer = w.rooms.events("m.call.negotiate", DM_ALICE)[1]
    assert offer["description"] == {"type": "offer", "sdp": "relay-new-offer"} and offer["lifetime"] > 0
    await w.deliver(
        DM_ALICE, ALICE, "m.call.negotiate", {**common(), "description": {"type": "answer", "sdp": "ans"}}
    )
    assert w.hub.made("accept_answer") == [("accept_answer", "PA_1", "ans")]


@pytest.mark.parametrize(
    ("removal", "spec_reason", "code"),
    [
        (RemovalReason.CONFERENCE_ENDED, "user_hangup", "conference_ended"),
        (RemovalReason.NOT_A_MEMBER, "unknown_error", "not_a_member"),
        (RemovalReason.MEDIA_FAILED, "ice_timeout", "media_failed"),
        (RemovalReason.REPLACED, "user_hangup", "replaced"),
        (RemovalReason.SHUTDOWN, "unknown_error", "shutdown"),
    ],
)
async def test_hub_removal_hangs_up_with_a_fitting_reason(
    store: Store, removal: str, spec_reason: str, code: str
) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    await w.hub.links["PA_1"].closed(removal)
    [hangup] = w.rooms.events("m.call.hangup", DM_ALICE)
    assert (hangup["reason"], hangup["io.visio.reason"]) == (spec_reason, code)
    assert hangup["call_id"] == "call1" and hangup["party_id"] == w.calls.party_id
    assert w.hub.made("leave") == []  # the hub already removed the participant


# ---- hostile content ----------------------------------------------------------------------------------


async def test_hostile_content_hangs_up_that_call_only(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite())
    await w.deliver(DM_BOB, BOB, "m.call.invite", invite("bobcall", "BOBDEV"))
    # Wrong type in an active call: that call is hung up with a clear reason.
    await w.deliver(DM_ALICE, ALICE, "m.call.candidates", {**common(), "candidates": "nope"})
    [hangup] = w.rooms.events("m.call.hangup", DM_ALICE)
    assert hangup["io.visio.reason"] == "bad_request" and "candidates" in hangup["io.visio.message"]
    assert w.hub.made("leave") == [("leave", "PA_1", RemovalReason.LEFT)]
    # Bob's call is unaffected and keeps working.
    entry = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    await w.deliver(DM_BOB, BOB, "m.call.candidates", {**common("bobcall", "BOBDEV"), "candidates": [entry]})
    assert w.hub.made("candidate")[-1][1] == "PA_2"
    assert w.rooms.events("m.call.hangup", DM_BOB) == []


async def test_hostile_invites_get_a_clear_hangup_and_no_join(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    huge = invite("huge")
    huge["offer"]["sdp"] = "a" * (65 * 1024)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", huge)
    no_lifetime = invite("nolife")
    del no_lifetime["lifetime"]
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", no_lifetime)
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", {"offer": 5})  # no call id at all: only logged
    assert w.hub.joins == []
    hangups = w.rooms.events("m.call.hangup", DM_ALICE)
    assert [h["call_id"] for h in hangups] == ["huge", "nolife"]
    assert all(h["io.visio.reason"] == "bad_request" for h in hangups)
    assert "offer.sdp" in hangups[0]["io.visio.message"] and "lifetime" in hangups[1]["io.visio.message"]
    # The DM still works for a valid call.
    await w.deliver(DM_ALICE, ALICE, "m.call.invite", invite("good"))
    assert len(w.hub.joins) == 1


# ---- ringing ------------------------------------------------------------------------------------------


async def test_ring_command_rings_members_not_in_the_call(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    w.rooms.set_members(
        ROOM_A,
        {BOT: "join", ALICE: "join", BOB: "join", CAROL: "join", DAVE: "join", "@eve:hs": "leave"},
        ALICE,
    )
    w.hub.views["PA_dave"] = ParticipantView(
        "PA_dave", "conf", ROOM_A, Identity(DAVE, "D"), "todevice", 0, True
    )
    text, result = await w.command(ROOM_A, ALICE, "!visio ring")
    assert result == "ok" and "Ringing 2 member(s)" in text
    # Bob has a DM: rung at once, with the relay's offer, invitee and a 60 s lifetime.
    [join] = w.hub.joins
    assert (join["room_id"], join["identity"].user_id, join["offer_sdp"], join["mode"]) == (
        ROOM_A,
        BOB,
        None,
        "mcu",
    )
    [ring] = w.rooms.events("m.call.invite", DM_BOB)
    assert ring["invitee"] == BOB and ring["lifetime"] == 60_000 and ring["version"] == "1"
    assert ring["offer"] == {"type": "offer", "sdp": "relay-offer-PA_1"}
    # Carol has none: an encrypted DM is created; she is rung once she joined it.
    assert w.rooms.created == [CAROL]
    dm_carol = await store.get_state(f"dm.{CAROL}")
    assert dm_carol is not None and "accept" in text
    await w.calls.tick()
    assert w.rooms.events("m.call.invite", dm_carol) == []
    w.rooms.set_members(dm_carol, {BOT: "join", CAROL: "join"})
    await w.calls.tick()
    [carol_ring] = w.rooms.events("m.call.invite", dm_carol)
    assert carol_ring["invitee"] == CAROL


async def test_ring_needs_the_start_power_level(store: Store) -> None:
    w = World(store, start_power_level=50)
    await w.conference(ROOM_A)
    text, result = await w.command(ROOM_A, BOB, "!visio ring")
    assert result == "denied" and "power level 50" in text
    assert w.hub.joins == []


async def test_ring_answered_selects_the_first_answer(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.command(ROOM_A, ALICE, "!visio ring")
    [ring] = w.rooms.events("m.call.invite", DM_BOB)
    call_id = ring["call_id"]
    early = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    await w.deliver(DM_BOB, BOB, "m.call.candidates", {**common(call_id, "BOBPHONE"), "candidates": [early]})
    await w.deliver(
        DM_BOB,
        BOB,
        "m.call.answer",
        {**common(call_id, "BOBPHONE"), "answer": {"type": "answer", "sdp": "A1"}},
    )
    await w.deliver(
        DM_BOB,
        BOB,
        "m.call.answer",
        {**common(call_id, "BOBLAPTOP"), "answer": {"type": "answer", "sdp": "A2"}},
    )
    assert w.hub.made("accept_answer") == [("accept_answer", "PA_1", "A1")]
    [select] = w.rooms.events("m.call.select_answer", DM_BOB)
    assert select["selected_party_id"] == "BOBPHONE" and select["call_id"] == call_id
    assert w.hub.made("candidate") == [
        ("candidate", "PA_1", early["candidate"], "0", 0)
    ]  # buffered, then applied


async def test_ring_rejected_or_expired_leaves_the_hub(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.command(ROOM_A, BOB, "!visio join")  # Bob picks ROOM_A: rung in his DM
    [ring] = w.rooms.events("m.call.invite", DM_BOB)
    await w.deliver(DM_BOB, BOB, "m.call.reject", common(ring["call_id"], "BOBPHONE"))
    assert w.hub.made("leave") == [("leave", "PA_1", RemovalReason.LEFT)]

    await w.command(ROOM_A, BOB, "!visio join")
    w.clock.advance(59)
    await w.calls.tick()
    assert w.rooms.events("m.call.hangup", DM_BOB) == []
    w.clock.advance(2)
    await w.calls.tick()
    [hangup] = w.rooms.events("m.call.hangup", DM_BOB)
    assert hangup["reason"] == "invite_timeout"
    assert w.hub.made("leave")[-1] == ("leave", "PA_2", RemovalReason.LEFT)


@pytest.mark.parametrize("ours_wins", [True, False])
async def test_glare_keeps_the_lower_call_id(store: Store, ours_wins: bool) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    await w.command(ROOM_A, BOB, "!visio join")
    [ring] = w.rooms.events("m.call.invite", DM_BOB)
    theirs = "~~~~" if ours_wins else "0"  # '~' sorts after every id character, '0' before letters
    assert (ring["call_id"] < theirs) is ours_wins
    await w.deliver(DM_BOB, BOB, "m.call.invite", invite(theirs, "BOBDEV"))
    if ours_wins:
        assert len(w.hub.joins) == 1 and w.rooms.events("m.call.answer") == []
        assert w.rooms.events("m.call.hangup") == []
    else:
        [hangup] = w.rooms.events("m.call.hangup", DM_BOB)
        assert hangup["call_id"] == ring["call_id"]
        assert w.hub.made("leave") == [("leave", "PA_1", RemovalReason.LEFT)]
        [answer] = w.rooms.events("m.call.answer", DM_BOB)
        assert answer["call_id"] == "0" and w.hub.joins[1]["offer_sdp"] == OFFER


async def test_join_command_replies(store: Store) -> None:
    w = World(store)
    assert await w.command(ROOM_A, ALICE, "!visio join") == (
        "There is no call in that room right now (!visio start starts one there).",
        "none",
    )
    assert (await w.command(DM_ALICE, ALICE, "!visio join"))[1] == "usage"
    assert (await w.command(DM_ALICE, ALICE, "!visio join #nowhere:hs"))[1] == "unknown_room"
    await w.conference(ROOM_B)
    w.rooms.aliases["#b:hs"] = ROOM_B
    assert (await w.command(DM_BOB, BOB, "!visio join #b:hs"))[1] == "denied"  # Bob is not in ROOM_B
    _text, result = await w.command(DM_ALICE, ALICE, "!visio join #b:hs")
    assert result == "ok" and w.hub.joins[0]["room_id"] == ROOM_B


async def test_restart_hangs_up_the_old_call_and_rings_again(store: Store) -> None:
    w = World(store)
    await w.conference(ROOM_A)
    record = await store.get_active_conference(ROOM_A)
    assert record is not None
    old = ParticipantRecord(
        "PA_old", record.conference_id, ALICE, "dm:X", "dm",
        {"dm_room_id": DM_ALICE, "call_id": "oldcall", "party_id": "OLDPARTY"}, 0, None, None,
    )  # fmt: skip
    await w.calls.start([(record, old)])
    try:
        for _ in range(100):  # the restore runs as a background task of DmCalls
            if w.rooms.events("m.call.invite", DM_ALICE):
                break
            await asyncio.sleep(0.01)
        [hangup] = w.rooms.events("m.call.hangup", DM_ALICE)
        assert (hangup["call_id"], hangup["party_id"]) == ("oldcall", "OLDPARTY")
        [ring] = w.rooms.events("m.call.invite", DM_ALICE)
        assert ring["invitee"] == ALICE
    finally:
        await w.calls.stop()


# ---- pure parts and the room bot's routing -------------------------------------------------------------


def test_dm_partner_needs_exactly_one_other_member() -> None:
    assert dm_partner({BOT: "join", ALICE: "join"}, BOT) == ALICE
    assert dm_partner({BOT: "join", ALICE: "invite", BOB: "leave"}, BOT) == ALICE
    assert dm_partner({BOT: "join", ALICE: "join", BOB: "join"}, BOT) is None
    assert dm_partner({BOT: "invite", ALICE: "join"}, BOT) is None
    assert dm_partner({BOT: "join"}, BOT) is None
    assert memberships([member(ALICE), {"type": "m.room.member", "state_key": BOB, "content": "x"}]) == {
        ALICE: "join"
    }


async def test_stale_dm_is_forgotten_and_a_new_one_created(store: Store) -> None:
    rooms = FakeRooms()
    directs = DirectRooms(rooms, store)
    rooms.set_members(DM_ALICE, {BOT: "join", ALICE: "join", BOB: "join"})  # no longer a DM
    await store.set_state(f"dm.{ALICE}", DM_ALICE)
    room = await directs.ensure(ALICE)
    assert room.room_id != DM_ALICE and not room.user_joined and rooms.created == [ALICE]
    assert await store.get_state(f"dm.{ALICE}") == room.room_id


def test_conference_choices_expire_after_ten_minutes() -> None:
    choices = ConferenceChoices()
    choices.chose(ALICE, ROOM_A, now=0.0)
    choices.rang(ALICE, ROOM_B, now=0.0)
    assert [(p.room_id, p.why) for p in choices.candidates(ALICE, 599.0)] == [
        (ROOM_A, "chosen"),
        (ROOM_B, "rang"),
    ]
    assert [(p.room_id, p.why) for p in choices.candidates(ALICE, 601.0)] == [(ROOM_B, "rang")]
    choices.forget_room(ROOM_B)
    assert choices.candidates(ALICE, 601.0) == []


class RecordingCallEvents:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.commands: list[str] = []

    async def on_call_event(self, event: RoomEvent, event_type: str, content: dict[str, Any]) -> None:
        self.events.append((event.event_id, event_type, content))

    async def on_command(self, event: RoomEvent, command: Command) -> tuple[str, str]:
        self.commands.append(command.name)
        return f"did {command.name}", "ok"


class BotIO(FakeRooms):
    def decrypt(self, event: RoomEvent) -> Any:
        from visio_matrix.crypto.bot_device import Decrypted

        return Decrypted("m.call.candidates", {"call_id": "x"}, "curve", True)

    async def join(self, room_id: str) -> None:
        pass

    async def leave(self, room_id: str) -> None:
        pass

    async def wait_for_sync(self, timeout: float) -> bool:
        return True


class NoConferences:
    async def start_conference(self, room_id: str, started_by: str) -> Any:
        raise AssertionError

    async def end_conference(self, room_id: str, ended_by: str) -> Any:
        raise AssertionError

    async def on_membership(self, room_id: str, user_id: str, membership: str) -> None:
        pass


async def test_room_bot_routes_call_events_and_commands(store: Store) -> None:
    io, recorder = BotIO(), RecordingCallEvents()
    bot = RoomBot(
        io,
        store,
        PolicyConfig(("hs",)),
        FakeClock(),
        Metrics(),
        call_events=recorder,
        conferences=NoConferences(),
    )
    plain = RoomEvent("$p", DM_ALICE, ALICE, "m.call.invite", {"call_id": "c"}, 0)
    encrypted = RoomEvent("$x", DM_ALICE, ALICE, "m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}, 0)
    await bot.on_room_event(plain)
    await bot.on_room_event(encrypted)
    assert recorder.events == [
        ("$p", "m.call.invite", {"call_id": "c"}),
        ("$x", "m.call.candidates", {"call_id": "x"}),
    ]
    for body in ("!visio join", "!visio ring"):
        await bot.on_room_event(RoomEvent(f"${body}", ROOM_A, ALICE, "m.room.message", {"body": body}, 0))
    assert recorder.commands == ["join", "ring"]
    assert [c["body"] for _, _, c in io.sent] == ["did join", "did ring"]
