"""The federation transport's decisions (calls/federation.py) with in-memory fakes: who it listens to,
refusals by policy and trust (with the room told), bad input skipped, crossing invites, roles."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from visio_matrix.calls.federation import FederationLinks
from visio_matrix.calls.hub_api import (
    ConferenceEnded,
    HubError,
    Identity,
    Joined,
    LinkStatusChanged,
    ParticipantConnectedEvent,
    ParticipantView,
    RelayLinkOptions,
)
from visio_matrix.clock import FakeClock
from visio_matrix.config.model import FederationConfig, PeerConfig, PolicyConfig
from visio_matrix.crypto.todevice import SecureToDevice
from visio_matrix.metrics import Metrics
from visio_matrix.relay.api import Negotiated
from visio_matrix.signaling.conference import GroupFields, build_conference_invite
from visio_matrix.signaling.envelope import inflate
from visio_matrix.signaling.link import LinkInfo, RosterEntry, with_link_info

ROOM = "!r:a.example"
KEY = "A" * 43
B = PeerConfig("b.example", "@visio:b.example", device_keys=(KEY,))
C = PeerConfig("c.example", "@visio:c.example", device_keys=(KEY,))
A = PeerConfig("a.example", "@visio:a.example", device_keys=(KEY,))  # us, as B's service sees us


class Channel:
    def __init__(self) -> None:
        self.handler: Callable[[SecureToDevice], Awaitable[None]] | None = None
        self.sent: list[tuple[str, str, str, dict[str, Any]]] = []

    def add_handler(self, handler: Callable[[SecureToDevice], Awaitable[None]]) -> None:
        self.handler = handler

    async def refresh_sender(self, message: SecureToDevice) -> SecureToDevice:
        return message

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None:
        self.sent.append((user_id, device_id, event_type, content))


@dataclass
class Decision:
    trusted: bool
    reason: str = ""


class Trust:
    def __init__(self, untrusted: frozenset[str], peers: tuple[PeerConfig, ...]) -> None:
        self.untrusted = untrusted
        self.peers = peers

    def peer_for(self, user_id: str) -> PeerConfig | None:
        return next((p for p in self.peers if p.bot_user_id == user_id), None)

    async def verify(self, user_id: str, device_id: str, ed25519: str) -> Decision:
        return Decision(device_id not in self.untrusted, "not pinned" if device_id in self.untrusted else "")


class Keys:
    async def query_keys(self, user_ids: list[str]) -> dict[str, Any]:
        return {"device_keys": {u: {"BOTDEV": {"keys": {"ed25519:BOTDEV": KEY}}} for u in user_ids}}


class Access:
    """Which peer bots are in the room (only then does our side invite them)."""

    def __init__(self, joined: frozenset[str]) -> None:
        self.joined = joined

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return user_id in self.joined


class Hub:
    def __init__(self, conference_id: str) -> None:
        self.conference_id = conference_id  # of the call in each room of ``rooms``
        self.ended: list[str] = []  # rooms whose call the transport ended
        self.joins: list[dict[str, Any]] = []
        self.answers: list[str] = []  # participants whose offer got its answer
        self.onward: dict[str, bool | None] = {}  # what each answer said of relaying onward
        self.left: list[str] = []
        self.announced: list[LinkStatusChanged] = []
        self.remote: dict[str, tuple[Identity, ...]] = {}
        self.rooms: list[str] = []

    async def join(self, room_id: str, identity: Identity, link: Any, **kwargs: Any) -> Joined:
        if kwargs.get("offer_sdp") == "refuse":
            raise HubError("not_a_member", "The linking bot is not a member of the room.")
        self.joins.append({"room_id": room_id, "identity": identity, **kwargs})
        sdp = "answer-sdp" if kwargs.get("offer_sdp") else "offer-sdp"
        return Joined(f"PA_{len(self.joins)}", "conf1", room_id, Negotiated(sdp, ()))

    async def apply_offer(self, *args: Any) -> Negotiated:
        return Negotiated("answer", ())

    async def accept_answer(self, participant_id: str, *args: Any, **kwargs: Any) -> None:
        self.answers.append(participant_id)
        self.onward[participant_id] = kwargs.get("onward_ok")

    async def request_offer(self, *args: Any) -> None:
        pass

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        self.left.append(participant_id)

    async def end_conference(self, room_id: str, ended_by: str) -> None:
        self.ended.append(room_id)

    async def set_remote_participants(self, room_id: str, server: str, remote: tuple[Identity, ...]) -> None:
        self.remote[server] = remote

    def local_participants(self, room_id: str) -> tuple[ParticipantView, ...]:
        return (
            ParticipantView(
                "PA_x", "conf1", room_id, Identity("@alice:a.example", "AD"), "todevice", 0, True
            ),
        )

    def conference_of_room(self, room_id: str) -> str | None:
        return self.conference_id if room_id in self.rooms else None

    async def active_rooms(self) -> list[str]:
        return list(self.rooms)

    async def announce(self, event: LinkStatusChanged) -> None:
        self.announced.append(event)

    def take_restorable(self, transport: Any) -> list[Any]:
        return []


class Setup:
    def __init__(
        self,
        link_servers: tuple[str, ...] = ("b.example",),
        untrusted: frozenset[str] = frozenset(),
        bots_in_room: frozenset[str] = frozenset(),
        server_name: str = "a.example",
        peers: tuple[PeerConfig, ...] = (B, C),
        conference_id: str = "conf1",
        metrics: Metrics | None = None,
        **policy: Any,
    ) -> None:
        self.channel = Channel()
        self.delivered = 0  # how many of channel.sent the other side got (two-sided tests)
        self.hub = Hub(conference_id)
        self.clock = FakeClock()
        self.links = FederationLinks(
            self.channel,
            self.hub,  # type: ignore[arg-type]
            Trust(untrusted, peers),
            Keys(),
            Access(bots_in_room),
            PolicyConfig(allowed_servers=(server_name,), link_servers=link_servers, **policy),
            FederationConfig(peers),
            server_name,
            f"@visio:{server_name}",
            "ADEV",
            self.clock,
            metrics,
        )
        self.links.start()

    async def receive(
        self, sender: str, event_type: str, content: Mapping[str, Any], device: str = "BOTDEV"
    ) -> None:
        assert self.channel.handler is not None
        await self.channel.handler(
            SecureToDevice(event_type, dict(content), sender, "curve", device, KEY, device)
        )
        await asyncio.sleep(0.05)

    def sent_types(self) -> list[tuple[str, str]]:
        return [(user, event_type) for user, _, event_type, _ in self.channel.sent]


def invite(
    peer: PeerConfig, call_id: str = "link-1", offer: str = "v=0 offer", **info: Any
) -> dict[str, Any]:
    content = build_conference_invite(
        call_id, "BOTDEV", GroupFields("", "BOTDEV", "theirsession", "", 1), ROOM, offer, 30_000
    )
    fields = {
        "server_name": peer.server_name,
        "roster": (RosterEntry("@u:" + peer.server_name, "UD"),),
        **info,
    }
    return with_link_info(content, LinkInfo(**fields))


@pytest.fixture
async def setup() -> Any:
    s = Setup()
    yield s
    await s.links.stop()


async def test_an_invite_from_a_linked_peer_is_answered_with_the_answering_role(setup: Setup) -> None:
    await setup.receive(B.bot_user_id, "m.call.invite", invite(B))
    (join,) = setup.hub.joins
    assert join["mode"] == "sfu_answer_only" and join["start_if_none"] and join["transport"] == "federation"
    assert join["identity"] == Identity(B.bot_user_id, "BOTDEV")
    assert join["relay_link"] == RelayLinkOptions(
        "b.example", allow_onward=False, onward_ok=False, stream_owners={}
    )
    assert setup.sent_types() == [(B.bot_user_id, "m.call.answer")]
    assert setup.hub.announced[-1].state == "connecting" and setup.hub.remote["b.example"] == ()
    # Media up: linked, and the far side's people now count and show.
    view = ParticipantView("PA_1", "conf1", ROOM, join["identity"], "federation", 0, True, "b.example")
    await setup.links.on_hub_event(ParticipantConnectedEvent(ROOM, "conf1", view))
    await asyncio.sleep(0.05)
    assert setup.hub.announced[-1].state == "linked"
    assert setup.hub.announced[-1].remote == (Identity("@u:b.example", "UD"),)
    assert setup.hub.remote["b.example"] == (Identity("@u:b.example", "UD"),)


async def test_a_peer_outside_link_servers_is_refused_and_the_room_is_told(setup: Setup) -> None:
    setup.hub.rooms.append(ROOM)
    await setup.receive(C.bot_user_id, "m.call.invite", invite(C))
    assert setup.hub.joins == []
    ((user, _, event_type, content),) = setup.channel.sent
    assert (user, event_type, content["io.visio.reason"]) == (
        C.bot_user_id,
        "m.call.hangup",
        "link_not_allowed",
    )
    (announced,) = setup.hub.announced
    assert (
        announced.state == "refused"
        and "link_servers" in announced.detail
        and "@u:c.example" in announced.detail
    )


async def test_an_untrusted_device_of_a_peer_bot_is_refused() -> None:
    s = Setup(untrusted=frozenset({"EVILDEV"}))
    s.hub.rooms.append(ROOM)
    try:
        await s.receive(B.bot_user_id, "m.call.invite", invite(B), device="EVILDEV")
        assert s.hub.joins == [] and s.channel.sent == []
        assert s.hub.announced[-1].state == "refused" and "not trusted" in s.hub.announced[-1].detail
    finally:
        await s.links.stop()


async def test_guests_on_the_far_side_are_refused_unless_policy_allows() -> None:
    s = Setup()
    allowing = Setup(remote_guests=True)
    try:
        await s.receive(B.bot_user_id, "m.call.invite", invite(B, guests=1))
        assert s.hub.joins == [] and s.channel.sent[-1][3]["io.visio.reason"] == "remote_guests_not_allowed"
        await allowing.receive(B.bot_user_id, "m.call.invite", invite(B, guests=1))
        assert len(allowing.hub.joins) == 1
    finally:
        await s.links.stop()
        await allowing.links.stop()


async def test_bad_messages_are_skipped_and_the_next_one_is_handled(setup: Setup) -> None:
    bad_info = invite(B)
    bad_info["io.visio.link"]["roster"] = "everyone"
    claims_other_server = invite(B, call_id="link-2")
    claims_other_server["io.visio.link"]["server"] = "c.example"
    await setup.receive(B.bot_user_id, "m.call.invite", {"call_id": 5})
    await setup.receive(B.bot_user_id, "m.call.invite", bad_info)
    await setup.receive(B.bot_user_id, "m.call.invite", claims_other_server)
    await setup.receive(B.bot_user_id, "io.visio.link.update", {"call_id": "x"})
    assert setup.hub.joins == []
    await setup.receive(B.bot_user_id, "m.call.invite", invite(B, call_id="link-3"))
    assert len(setup.hub.joins) == 1


async def test_users_signaling_is_left_to_the_participant_transport(setup: Setup) -> None:
    assert setup.links.is_peer_bot(B.bot_user_id) and not setup.links.is_peer_bot("@u:b.example")
    await setup.receive("@u:b.example", "m.call.invite", invite(B))
    assert setup.hub.joins == [] and setup.channel.sent == []


async def test_we_invite_with_the_offering_role_and_crossing_invites_follow_the_lower_server() -> None:
    """a.example < b.example: our pending invite wins over B's; B's bot answers ours."""
    s = Setup(bots_in_room=frozenset({B.bot_user_id}))
    s.hub.rooms.append(ROOM)
    try:
        await s.links.maintain()
        (join,) = s.hub.joins
        assert (
            join["mode"] == "sfu"
            and join["relay_link"].server_name == "b.example"
            and "offer_sdp" not in join
        )
        assert s.sent_types() == [(B.bot_user_id, "m.call.invite")]
        await s.receive(B.bot_user_id, "m.call.invite", invite(B))  # crossed: ignored, ours again
        assert len(s.hub.joins) == 1 and s.sent_types() == [(B.bot_user_id, "m.call.invite")] * 2
        assert len({inflate(c)["call_id"] for _, _, _, c in s.channel.sent}) == 1
    finally:
        await s.links.stop()


async def test_an_unanswered_invite_is_given_up_and_retried() -> None:
    setup = Setup(bots_in_room=frozenset({B.bot_user_id}))
    setup.hub.rooms.append(ROOM)
    await setup.links.maintain()
    setup.clock.advance(9)
    await setup.links.maintain()
    assert setup.hub.left == ["PA_1"]
    assert setup.hub.announced[-1].state == "unreachable"
    assert setup.links.link_states(ROOM)["b.example"][0] == "unreachable"
    await setup.links.maintain()  # too early to try again
    assert len(setup.hub.joins) == 1
    setup.clock.advance(1.5)
    await setup.links.maintain()
    assert len(setup.hub.joins) == 2
    await setup.links.stop()


async def test_while_linked_an_invite_of_the_same_peer_run_is_ignored_and_a_restarted_peer_replaces(
    setup: Setup,
) -> None:
    await setup.receive(B.bot_user_id, "m.call.invite", invite(B))
    view = ParticipantView(
        "PA_1", "conf1", ROOM, Identity(B.bot_user_id, "BOTDEV"), "federation", 0, True, "b.example"
    )
    await setup.links.on_hub_event(ParticipantConnectedEvent(ROOM, "conf1", view))
    await asyncio.sleep(0.05)
    assert setup.links.link_states(ROOM)["b.example"][0] == "linked"
    stale = invite(B, call_id="link-old")  # sent by the same run of B's service (same session)
    await setup.receive(B.bot_user_id, "m.call.invite", stale)
    assert len(setup.hub.joins) == 1 and setup.hub.left == []
    restarted = invite(B, call_id="link-new")
    restarted["sender_session_id"] = "newsession"
    await setup.receive(B.bot_user_id, "m.call.invite", restarted)
    assert len(setup.hub.joins) == 2 and setup.hub.left == ["PA_1"]


async def test_an_invite_whose_hangup_came_with_it_is_skipped(setup: Setup) -> None:
    """Invites a peer sent while we were away arrive together with the hangups that gave them up."""
    stale = invite(B, call_id="link-stale")
    hangup = {
        "call_id": "link-stale",
        "party_id": "BOTDEV",
        "version": "1",
        "reason": "invite_timeout",
        "conf_id": "",
        "device_id": "BOTDEV",
        "sender_session_id": "theirsession",
        "dest_session_id": "",
        "seq": 2,
    }
    assert setup.channel.handler is not None
    for event_type, content in (("m.call.invite", stale), ("m.call.hangup", hangup)):
        await setup.channel.handler(
            SecureToDevice(event_type, content, B.bot_user_id, "curve", "BOTDEV", KEY, "BOTDEV")
        )
    await asyncio.sleep(0.05)
    assert setup.hub.joins == [] and setup.channel.sent == []


async def deliver(s: Setup, other: Setup) -> None:
    """Delivers to ``other`` what ``s`` sent and it has not had yet."""
    sent = s.channel.sent[s.delivered :]
    s.delivered += len(sent)
    for _user, _device, event_type, content in sent:
        await other.receive(s.links.bot_user_id, event_type, content)


async def exchange(a: Setup, b: Setup) -> None:
    """Delivers what each side sent and the other has not had yet, until both are quiet."""
    for _ in range(5):
        await deliver(a, b)
        await deliver(b, a)


def b_service(**policy: Any) -> Setup:
    """B's service, with a call in ROOM and A's bot in the room (two-sided tests)."""
    b = Setup(
        ("a.example",),
        bots_in_room=frozenset({A.bot_user_id}),
        server_name="b.example",
        peers=(A, C),
        conference_id="bconf",
        **policy,
    )
    b.hub.rooms.append(ROOM)
    return b


@pytest.mark.parametrize("b_onward", [True, False])
async def test_the_answer_tells_the_inviting_side_whether_to_relay_onward(b_onward: bool) -> None:
    """A invites, so B's policy.relay_onwards reaches A only in B's answer; A's relay gets it."""
    a, b = Setup(bots_in_room=frozenset({B.bot_user_id})), b_service(relay_onwards=b_onward)
    a.hub.rooms.append(ROOM)
    try:
        await a.links.maintain()
        await exchange(a, b)
        assert a.hub.joins[0]["relay_link"].onward_ok is False  # not known before the answer
        assert a.hub.onward == {"PA_1": b_onward}
        assert b.hub.joins[0]["relay_link"].onward_ok is False  # A's own policy, in its invite
    finally:
        await a.links.stop()
        await b.links.stop()


async def test_crossing_invites_end_with_one_offerer_even_after_a_restart() -> None:
    """B restarts during a linked call; back, it invites A at once while A's retry invite is on its
    way, and each service gets the other's: the lower server's invite wins on both sides, so one side
    offers and the other answers (the earlier rule let the restarted side's invite win at A while B
    took A's: both answered, nobody offered, and the link stayed down until ICE gave up)."""

    a, b = Setup(bots_in_room=frozenset({B.bot_user_id})), b_service()
    a.hub.rooms.append(ROOM)
    try:
        await a.links.maintain()
        await exchange(a, b)  # B's first run answers A's invite
        assert a.hub.answers == ["PA_1"]
        before = len(a.channel.sent)
        await b.links.stop()  # B stops: it hangs up the link
        await exchange(a, b)
        assert a.links.link_states(ROOM)["b.example"][0] == "unreachable"
        b = b_service()  # B's second run, with the call restored
        a.clock.advance(2)
        await a.links.maintain()  # A's retry...
        await b.links.maintain()  # ...and B's invite cross
        await exchange(a, b)
        assert [j["mode"] for j in a.hub.joins] == ["sfu", "sfu"]
        assert [j["mode"] for j in b.hub.joins] == ["sfu", "sfu_answer_only"]
        assert a.hub.answers == ["PA_1", "PA_2"] and b.hub.left == ["PA_1"]
        a_link = a.links._peers[(ROOM, "b.example")].link
        b_link = b.links._peers[(ROOM, "a.example")].link
        assert a_link is not None and b_link is not None
        assert a_link.call_id == b_link.call_id and a_link.offerer and not b_link.offerer
        # A sent its retry invite twice (once more when B's crossed it); B ignored the duplicate.
        assert [t for _, _, t, _ in a.channel.sent[before:]].count("m.call.invite") == 2
    finally:
        await a.links.stop()
        await b.links.stop()


@pytest.mark.parametrize("b_reinvites_first", [False, True])
async def test_a_call_ended_on_one_side_ends_on_the_other_when_its_relay_closing_came_first(
    b_reinvites_first: bool,
) -> None:
    """``!visio stop`` on A: A's relay closing the link reaches B's relay before A's hangup
    (``conference_ended``) reaches B's bot, so B has forgotten the link by then and may even have
    invited A again. B's call still ends, and A never starts a new call for B's invite."""
    a, b = Setup(bots_in_room=frozenset({B.bot_user_id})), b_service()
    a.hub.rooms.append(ROOM)
    try:
        await a.links.maintain()
        await exchange(a, b)
        a_link = a.links._peers[(ROOM, "b.example")].link
        b_link = b.links._peers[(ROOM, "a.example")].link
        assert a_link is not None and b_link is not None and a_link.call_id == b_link.call_id
        await b.links.on_link_closed(b_link, "left")  # A's relay closed the connection
        await a.links.on_link_closed(a_link, "conference_ended")  # A's hub ended its call
        a.hub.rooms.remove(ROOM)
        await a.links.on_hub_event(ConferenceEnded(ROOM, "conf1", "@alice:a.example", 0, 1))
        if b_reinvites_first:
            before = len(b.channel.sent)
            b.clock.advance(2)
            await b.links.maintain()
            assert [t for _, _, t, _ in b.channel.sent[before:]] == ["m.call.invite"]
            await deliver(b, a)  # B's invite comes to A before A's hangup comes to B
            assert len(a.hub.joins) == 1  # no new call on A for it
            assert a.channel.sent[-1][2] == "m.call.hangup"
            assert inflate(a.channel.sent[-1][3])["reason"] == "user_hangup"
        await exchange(a, b)
        assert b.hub.ended and set(b.hub.ended) == {ROOM}
        assert len(a.hub.joins) == 1 and a.hub.ended == []
        assert b.links.link_states(ROOM)["a.example"] == ("closed", "the call ended there")
    finally:
        await a.links.stop()
        await b.links.stop()


async def test_a_hangup_from_another_call_of_the_peer_ends_nothing() -> None:
    a, b = Setup(bots_in_room=frozenset({B.bot_user_id})), b_service()
    a.hub.rooms.append(ROOM)
    try:
        await a.links.maintain()
        await exchange(a, b)
        stale = {
            "call_id": "link-older",
            "party_id": "ADEV",
            "version": "1",
            "reason": "user_hangup",
            "io.visio.reason": "conference_ended",
            "conf_id": "an-older-call-of-a",
            "device_id": "ADEV",
            "sender_session_id": "x",
            "dest_session_id": "",
            "seq": 9,
        }
        await b.receive(A.bot_user_id, "m.call.hangup", stale)
        assert b.hub.ended == [] and b.links.link_states(ROOM)["a.example"][0] == "connecting"
    finally:
        await a.links.stop()
        await b.links.stop()


async def test_admins_see_link_states_and_failures_in_the_metrics() -> None:
    metrics = Metrics()
    s = Setup(bots_in_room=frozenset({B.bot_user_id}), metrics=metrics)
    s.hub.rooms.append(ROOM)

    def links(state: str) -> float | None:
        return metrics.registry.get_sample_value(
            "visio_federation_links", {"server": "b.example", "state": state}
        )

    def failures(kind: str) -> float | None:
        return metrics.registry.get_sample_value(
            "visio_federation_link_failures_total", {"server": "b.example", "kind": kind}
        )

    try:
        await s.links.maintain()
        assert links("connecting") == 1 and links("linked") == 0
        assert (
            metrics.registry.get_sample_value(
                "visio_federation_links", {"server": "c.example", "state": "connecting"}
            )
            == 0
        )  # C's bot is not in the room
        s.clock.advance(9)
        await s.links.maintain()  # B never answered
        assert links("connecting") == 0 and links("unreachable") == 1 and failures("failed") == 1
        await s.links.on_hub_event(ConferenceEnded(ROOM, "conf1", "@alice:a.example", 0, 1))
        assert links("unreachable") == 0
    finally:
        await s.links.stop()
