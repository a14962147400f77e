"""1:1 calls with unmodified clients (spec VoIP module): the bot's per-call machine and per-room routing."""

from __future__ import annotations

from typing import Any

import pytest

from visio_matrix.signaling import (
    AcceptAnswer,
    AddCandidates,
    ApplyOffer,
    CallAction,
    CallRoomEvent,
    Candidate,
    EndCall,
    EndOfCandidates,
    Ignore,
    JoinConference,
    MakeOffer,
    OneToOneCall,
    OneToOneRoom,
    OneToOneState,
    SendEvent,
    SignalingError,
    StreamMetadata,
    UpdateStreams,
    build_answer,
    build_candidates,
    build_hangup,
    build_invite,
    build_negotiate,
    build_reject,
    build_select_answer,
    build_stream_metadata_changed,
    parse_call_content,
    parse_room_call_event,
)

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
HOST = "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host"
BOT = "@visio:example.org"
ALICE = "@alice:example.org"
NOW = 1_700_000_000_000
CAND = Candidate(HOST, "0", 0)


def ev(
    event_type: str,
    content: dict[str, Any],
    sender: str = ALICE,
    *,
    ts: int = NOW,
    event_id: str = "",
    age_ms: int | None = None,
    received_ms: int | None = None,
) -> CallRoomEvent:
    message = parse_call_content(event_type, content)
    assert not isinstance(message, SignalingError), message
    return CallRoomEvent(sender, message, event_id, ts, age_ms, received_ms)


def invite(
    call_id: str = "c1", party: str = "ALICEPARTY", lifetime: int = 60000, **kw: Any
) -> dict[str, Any]:
    return build_invite(call_id, party, SDP, lifetime, **kw)


def sent(actions: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(a.event_type, a.content) for a in actions if isinstance(a, SendEvent)]


def incoming(**kw: Any) -> OneToOneCall:
    call, _ = OneToOneCall.incoming(
        ev("m.call.invite", invite(**kw)), bot_user_id=BOT, bot_party_id="BOTP", now_ms=NOW
    )
    assert call is not None
    return call


def connected_incoming() -> OneToOneCall:
    call = incoming()
    call.answer_ready(SDP, now_ms=NOW)
    return call


def ringing(invitee: str = ALICE, call_id: str = "b1") -> tuple[OneToOneCall, list[Any]]:
    return OneToOneCall.outgoing(
        call_id=call_id,
        bot_user_id=BOT,
        bot_party_id="BOTP",
        invitee=invitee,
        offer_sdp=SDP,
        now_ms=NOW,
        lifetime_ms=90000,
    )


# -- liveness of room events --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_ms", "received_ms", "origin_ts", "now", "expected"),
    [
        (1000, NOW, NOW - 99_999, NOW, 1000),  # unsigned.age wins over a skewed origin_server_ts
        (1000, NOW, None, NOW + 500, 1500),  # plus the time since reception
        (1000, None, None, NOW, 1000),
        (None, None, NOW - 2500, NOW, 2500),  # no age: origin_server_ts
        (None, None, NOW + 5000, NOW, 0),  # a server clock ahead never gives a negative age
        (None, None, None, NOW, 0),
    ],
)
def test_event_age(
    age_ms: int | None, received_ms: int | None, origin_ts: int | None, now: int, expected: int
) -> None:
    message = parse_call_content("m.call.reject", build_reject("c1", "P"))
    assert not isinstance(message, SignalingError)
    event = CallRoomEvent(ALICE, message, "$e", origin_ts, age_ms, received_ms)
    assert event.age_at(now) == expected


def test_parse_room_call_event() -> None:
    event = parse_room_call_event(
        "m.call.invite",
        invite(),
        sender=ALICE,
        event_id="$1",
        origin_server_ts=NOW,
        unsigned={"age": 42},
        received_ms=NOW,
    )
    assert isinstance(event, CallRoomEvent) and event.age_ms == 42 and event.event_id == "$1"
    bad_age = parse_room_call_event("m.call.invite", invite(), sender=ALICE, unsigned={"age": "old"})
    assert isinstance(bad_age, CallRoomEvent) and bad_age.age_ms is None
    assert parse_room_call_event("m.call.invite", {"call_id": "x"}, sender=ALICE) == SignalingError(
        "missing_field", "version: missing"
    )


# -- incoming calls (the user calls the bot) ---------------------------------------------------------------


INCOMING_REFUSED: list[tuple[str, CallRoomEvent, str]] = [
    (
        "expired by origin_server_ts",
        ev("m.call.invite", invite(lifetime=60000), ts=NOW - 60000),
        "invite expired: age 60000 ms, lifetime 60000 ms",
    ),
    (
        "expired by unsigned.age",
        # unsigned.age 4000 ms when received 1 s ago; origin_server_ts alone would say "fresh".
        ev("m.call.invite", invite(lifetime=5000), age_ms=4000, received_ms=NOW - 1000),
        "invite expired: age 5000 ms, lifetime 5000 ms",
    ),
    (
        "meant for someone else",
        ev("m.call.invite", invite(invitee="@bob:example.org")),
        "invite meant for @bob:example.org",
    ),
    (
        "sent by the bot's own user",
        ev("m.call.invite", invite(), sender=BOT),
        "invite sent by the bot's own user",
    ),
]


@pytest.mark.parametrize(
    ("event", "why"), [c[1:] for c in INCOMING_REFUSED], ids=[c[0] for c in INCOMING_REFUSED]
)
def test_incoming_invites_ignored(event: CallRoomEvent, why: str) -> None:
    call, actions = OneToOneCall.incoming(event, bot_user_id=BOT, bot_party_id="BOTP", now_ms=NOW)
    assert call is None and actions == [Ignore(why)]


def test_incoming_call_answer_flow() -> None:
    metadata = {"s": StreamMetadata("m.usermedia")}
    call, actions = OneToOneCall.incoming(
        ev("m.call.invite", invite(invitee=BOT, stream_metadata=metadata), ts=NOW - 1000),
        bot_user_id=BOT,
        bot_party_id="BOTP",
        now_ms=NOW,
    )
    assert call is not None and actions == [JoinConference(SDP, metadata)]
    assert call.state is OneToOneState.JOINING and call.deadline_ms == NOW + 59000
    # Candidates before the relay answered are buffered.
    cands = build_candidates("c1", "ALICEPARTY", (CAND, EndOfCandidates()))
    assert call.receive(ev("m.call.candidates", cands), NOW) == []
    actions = call.answer_ready(SDP, now_ms=NOW + 100, stream_metadata={"mix": StreamMetadata("m.usermedia")})
    events = sent(actions)
    assert [event_type for event_type, _ in events] == ["m.call.answer", "m.call.candidates"]
    answer = parse_call_content(*events[0])
    assert not isinstance(answer, SignalingError) and answer.party_id == "BOTP"
    assert events[0][1]["org.matrix.msc3077.sdp_stream_metadata"] == events[0][1]["sdp_stream_metadata"]
    assert events[1][1]["candidates"] == [{"candidate": ""}]  # the bot's explicit end of candidates
    assert actions[-1] == AddCandidates((CAND, EndOfCandidates()))
    assert call.state is OneToOneState.CONNECTED
    later = build_candidates("c1", "ALICEPARTY", (CAND,))
    assert call.receive(ev("m.call.candidates", later), NOW) == [AddCandidates((CAND,))]


def test_end_of_candidates_event_can_be_disabled() -> None:
    call, _ = OneToOneCall.incoming(
        ev("m.call.invite", invite()),
        bot_user_id=BOT,
        bot_party_id="BOTP",
        now_ms=NOW,
        send_end_of_candidates=False,
    )
    assert call is not None
    assert [t for t, _ in sent(call.answer_ready(SDP, now_ms=NOW))] == ["m.call.answer"]


def test_answer_ready_after_the_invite_expired_hangs_up() -> None:
    call = incoming(lifetime=1000)
    actions = call.answer_ready(SDP, now_ms=NOW + 1000)
    assert sent(actions) == [("m.call.hangup", build_hangup("c1", "BOTP", "invite_timeout"))]
    assert actions[-1] == EndCall("bot hung up (invite_timeout)")


INCOMING_CONNECTED: list[tuple[str, CallRoomEvent, list[Any], OneToOneState]] = [
    (
        "our own echo",
        ev("m.call.answer", build_answer("c1", "BOTP", SDP), sender=BOT),
        [Ignore("remote echo of our own event")],
        OneToOneState.CONNECTED,
    ),
    (
        "another user",
        ev("m.call.hangup", build_hangup("c1", "ALICEPARTY"), sender="@eve:example.org"),
        [Ignore("event from @eve:example.org, not a party of this call")],
        OneToOneState.CONNECTED,
    ),
    (
        "another party of the caller",
        ev("m.call.hangup", build_hangup("c1", "ALICEPHONE")),
        [Ignore("event from party ALICEPHONE, not the one in the call")],
        OneToOneState.CONNECTED,
    ),
    (
        "select_answer naming us",
        ev("m.call.select_answer", build_select_answer("c1", "ALICEPARTY", "BOTP")),
        [Ignore("the caller selected our answer")],
        OneToOneState.CONNECTED,
    ),
    (
        "select_answer naming another party: hang up locally, send nothing",
        ev("m.call.select_answer", build_select_answer("c1", "ALICEPARTY", "OTHERBOT")),
        [EndCall("answered elsewhere (party OTHERBOT)")],
        OneToOneState.ENDED,
    ),
    (
        "hangup",
        ev("m.call.hangup", build_hangup("c1", "ALICEPARTY", "user_hangup")),
        [EndCall("remote hung up (user_hangup)")],
        OneToOneState.ENDED,
    ),
    (
        "metadata changed",
        ev(
            "m.call.sdp_stream_metadata_changed",
            build_stream_metadata_changed("c1", "ALICEPARTY", {"s": StreamMetadata("m.usermedia", True)}),
        ),
        [UpdateStreams({"s": StreamMetadata("m.usermedia", True)})],
        OneToOneState.CONNECTED,
    ),
    (
        "duplicate invite",
        ev("m.call.invite", invite()),
        [Ignore("duplicate m.call.invite")],
        OneToOneState.CONNECTED,
    ),
    (
        "reject",
        ev("m.call.reject", build_reject("c1", "ALICEPARTY")),
        [Ignore("CallReject does not apply in state connected")],
        OneToOneState.CONNECTED,
    ),
    (
        "other call",
        ev("m.call.hangup", build_hangup("c2", "ALICEPARTY")),
        [Ignore("event for call c2, not c1")],
        OneToOneState.CONNECTED,
    ),
]


@pytest.mark.parametrize(
    ("event", "expected", "state"),
    [c[1:] for c in INCOMING_CONNECTED],
    ids=[c[0] for c in INCOMING_CONNECTED],
)
def test_incoming_connected_inputs(event: CallRoomEvent, expected: list[Any], state: OneToOneState) -> None:
    call = connected_incoming()
    assert call.receive(event, NOW) == expected
    assert call.state is state


def test_legacy_version_0_caller() -> None:
    raw = {"call_id": "old1", "version": 0, "offer": {"type": "offer", "sdp": SDP}, "lifetime": 30000}
    call, actions = OneToOneCall.incoming(
        ev("m.call.invite", raw), bot_user_id=BOT, bot_party_id="BOTP", now_ms=NOW
    )
    assert call is not None and actions == [JoinConference(SDP, None)]
    call.answer_ready(SDP, now_ms=NOW)
    hangup = ev("m.call.hangup", {"call_id": "old1", "version": 0})
    assert call.receive(hangup, NOW) == [EndCall("remote hung up (user_hangup)")]


# -- renegotiation (m.call.negotiate) -----------------------------------------------------------------------


def test_remote_renegotiation_is_applied_and_answered() -> None:
    call = connected_incoming()
    offer = ev("m.call.negotiate", build_negotiate("c1", "ALICEPARTY", "offer", SDP, lifetime_ms=10000))
    assert call.receive(offer, NOW) == [ApplyOffer(SDP)]
    [(event_type, content)] = sent(call.negotiate_answer_ready(SDP))
    assert event_type == "m.call.negotiate" and content["description"] == {"type": "answer", "sdp": SDP}


def test_bot_renegotiation() -> None:
    call = connected_incoming()
    assert call.streams_changed() == [MakeOffer()]
    [(event_type, content)] = sent(call.send_offer(SDP, now_ms=NOW, lifetime_ms=5000))
    assert (event_type, content["description"]["type"], content["lifetime"]) == (
        "m.call.negotiate",
        "offer",
        5000,
    )
    answer = ev("m.call.negotiate", build_negotiate("c1", "ALICEPARTY", "answer", SDP))
    assert call.receive(answer, NOW) == [AcceptAnswer(SDP)]
    assert call.receive(answer, NOW) == [Ignore("negotiate answer without an offer of ours out")]


def test_crossing_offers_callee_bot_is_polite() -> None:
    call = connected_incoming()  # the bot is the callee: polite
    call.streams_changed()
    call.send_offer(SDP, now_ms=NOW)
    offer = ev("m.call.negotiate", build_negotiate("c1", "ALICEPARTY", "offer", SDP))
    assert call.receive(offer, NOW) == [ApplyOffer(SDP, rollback_local_offer=True)]
    # After answering, the bot offers again (its change is still wanted).
    assert call.negotiate_answer_ready(SDP)[-1] == MakeOffer()


def test_crossing_offers_caller_bot_is_impolite() -> None:
    call, _ = ringing()
    call.receive(ev("m.call.answer", build_answer("b1", "ALICEPARTY", SDP)), NOW)
    call.streams_changed()
    call.send_offer(SDP, now_ms=NOW)
    offer = ev("m.call.negotiate", build_negotiate("b1", "ALICEPARTY", "offer", SDP))
    assert call.receive(offer, NOW) == [
        Ignore("offers crossed and we are the impolite party (caller): ours wins")
    ]


def test_unanswered_renegotiation_hangs_up() -> None:
    call = connected_incoming()
    call.streams_changed()
    call.send_offer(SDP, now_ms=NOW, lifetime_ms=1000)
    assert call.deadline_ms == NOW + 1000 and call.tick(NOW + 999) == []
    assert sent(call.tick(NOW + 1000)) == [("m.call.hangup", build_hangup("c1", "BOTP", "unknown_error"))]


def test_negotiate_before_connected_is_ignored() -> None:
    call = incoming()
    offer = ev("m.call.negotiate", build_negotiate("c1", "ALICEPARTY", "offer", SDP))
    assert call.receive(offer, NOW) == [Ignore("m.call.negotiate before the call is connected")]


# -- outgoing calls (the bot rings a member) ---------------------------------------------------------------


def test_ring_sends_invite_with_invitee_and_lifetime() -> None:
    call, actions = ringing()
    events = sent(actions)
    assert events[0] == ("m.call.invite", build_invite("b1", "BOTP", SDP, 90000, invitee=ALICE))
    assert events[1] == ("m.call.candidates", build_candidates("b1", "BOTP", (EndOfCandidates(),)))
    assert call.state is OneToOneState.RINGING and call.deadline_ms == NOW + 90000


def test_first_answer_is_selected_later_answers_ignored() -> None:
    call, _ = ringing()
    early = build_candidates("b1", "PHONE", (CAND,))
    other = build_candidates("b1", "LAPTOP", (Candidate(HOST, "1", 1),))
    assert call.receive(ev("m.call.candidates", early), NOW) == []
    assert call.receive(ev("m.call.candidates", other), NOW) == []
    actions = call.receive(ev("m.call.answer", build_answer("b1", "PHONE", SDP)), NOW)
    assert actions == [
        AcceptAnswer(SDP),
        SendEvent("m.call.select_answer", build_select_answer("b1", "BOTP", "PHONE")),
        AddCandidates((CAND,)),
    ]
    assert call.remote_party_id == "PHONE" and call.state is OneToOneState.CONNECTED
    late = ev("m.call.answer", build_answer("b1", "LAPTOP", SDP))
    assert call.receive(late, NOW) == [Ignore("answer from another party after one was selected")]
    assert call.receive(ev("m.call.candidates", other), NOW) == [
        Ignore("event from party LAPTOP, not the one in the call")
    ]


RING_ENDINGS: list[tuple[str, CallRoomEvent, list[Any]]] = [
    ("reject", ev("m.call.reject", build_reject("b1", "PHONE")), [EndCall("the invitee rejected the call")]),
    (
        "hangup while ringing",
        ev("m.call.hangup", build_hangup("b1", "PHONE", "user_busy")),
        [EndCall("the invitee hung up while ringing (user_busy)")],
    ),
]


@pytest.mark.parametrize(
    ("event", "expected"), [c[1:] for c in RING_ENDINGS], ids=[c[0] for c in RING_ENDINGS]
)
def test_ring_ended_by_the_invitee(event: CallRoomEvent, expected: list[Any]) -> None:
    call, _ = ringing()
    assert call.receive(event, NOW) == expected and call.ended


def test_ring_ignores_others() -> None:
    call, _ = ringing()
    stranger = ev("m.call.answer", build_answer("b1", "EVE", SDP), sender="@eve:example.org")
    assert call.receive(stranger, NOW) == [Ignore("event from @eve:example.org, not a party of this call")]
    select = ev("m.call.select_answer", build_select_answer("b1", "PHONE", "X"))
    assert call.receive(select, NOW) == [Ignore("CallSelectAnswer while ringing")]
    assert call.state is OneToOneState.RINGING


def test_ring_timeout() -> None:
    call, _ = ringing()
    assert call.tick(NOW + 89_999) == []
    actions = call.tick(NOW + 90_000)
    assert actions == [
        SendEvent("m.call.hangup", build_hangup("b1", "BOTP", "invite_timeout")),
        EndCall("bot hung up (invite_timeout)"),
    ]
    assert call.tick(NOW + 100_000) == [] and call.deadline_ms is None


def test_reject_after_connect_is_ignored() -> None:
    call, _ = ringing()
    call.receive(ev("m.call.answer", build_answer("b1", "PHONE", SDP)), NOW)
    assert call.receive(ev("m.call.reject", build_reject("b1", "PHONE")), NOW) == [
        Ignore("CallReject does not apply in state connected")
    ]


# -- the room: routing, duplicates, glare -------------------------------------------------------------------


def room() -> OneToOneRoom:
    return OneToOneRoom(room_id="!dm:example.org", bot_user_id=BOT, bot_party_id="BOTP")


def test_room_routes_and_deduplicates() -> None:
    r = room()
    first = ev("m.call.invite", invite("c1"), event_id="$1")
    assert r.receive(first, NOW) == [CallAction("c1", JoinConference(SDP, None))]
    assert r.receive(first, NOW) == [CallAction("c1", Ignore("event $1 already handled"))]
    # A second invite event with the same call_id (e.g. a replay under another event id).
    assert r.receive(ev("m.call.invite", invite("c1"), event_id="$2"), NOW) == [
        CallAction("c1", Ignore("duplicate m.call.invite"))
    ]
    unknown = ev("m.call.hangup", build_hangup("zz", "ALICEPARTY"), event_id="$3")
    assert r.receive(unknown, NOW) == [CallAction("zz", Ignore("event for an unknown call"))]
    call = r.get("c1")
    assert call is not None and r.active_call_with(ALICE) is call
    hangup = ev("m.call.hangup", build_hangup("c1", "ALICEPARTY"), event_id="$4")
    assert r.receive(hangup, NOW) == [CallAction("c1", EndCall("remote hung up (user_hangup)"))]
    assert r.active_calls() == []


def test_room_ignores_expired_invite_and_its_later_events() -> None:
    r = room()
    old = ev("m.call.invite", invite("c1", lifetime=1000), ts=NOW - 5000)
    assert r.receive(old, NOW) == [CallAction("c1", Ignore("invite expired: age 5000 ms, lifetime 1000 ms"))]
    cands = ev("m.call.candidates", build_candidates("c1", "ALICEPARTY", (CAND,)))
    assert r.receive(cands, NOW) == [CallAction("c1", Ignore("event for a call ignored earlier"))]


def test_glare_our_call_has_the_lesser_id_and_wins() -> None:
    r = room()
    r.ring(call_id="a-ours", invitee=ALICE, offer_sdp=SDP, now_ms=NOW)
    theirs = ev("m.call.invite", invite("b-theirs"))
    assert r.receive(theirs, NOW) == [
        CallAction("b-theirs", Ignore("glare: our call a-ours has the lesser call_id"))
    ]
    ours = r.get("a-ours")
    assert ours is not None and ours.state is OneToOneState.RINGING
    assert r.get("b-theirs") is None


def test_glare_their_call_has_the_lesser_id_and_wins() -> None:
    r = room()
    r.ring(call_id="z-ours", invitee=ALICE, offer_sdp=SDP, now_ms=NOW)
    actions = r.receive(ev("m.call.invite", invite("m-theirs")), NOW)
    assert actions == [
        CallAction("z-ours", SendEvent("m.call.hangup", build_hangup("z-ours", "BOTP", "user_hangup"))),
        CallAction("z-ours", EndCall("bot hung up (user_hangup)")),
        CallAction("m-theirs", JoinConference(SDP, None)),
    ]
    ours, theirs = r.get("z-ours"), r.get("m-theirs")
    assert ours is not None and ours.ended
    assert theirs is not None and theirs.state is OneToOneState.JOINING


def test_no_glare_with_an_invite_the_bot_ignores() -> None:
    r = room()
    r.ring(call_id="z-ours", invitee=ALICE, offer_sdp=SDP, now_ms=NOW)
    expired = ev("m.call.invite", invite("a-theirs", lifetime=1000), ts=NOW - 2000)
    assert r.receive(expired, NOW) == [
        CallAction("a-theirs", Ignore("invite expired: age 2000 ms, lifetime 1000 ms"))
    ]
    ours = r.get("z-ours")
    assert ours is not None and ours.state is OneToOneState.RINGING


def test_no_glare_with_another_user() -> None:
    r = room()
    r.ring(call_id="z-ours", invitee="@bob:example.org", offer_sdp=SDP, now_ms=NOW)
    assert r.receive(ev("m.call.invite", invite("a-theirs")), NOW) == [
        CallAction("a-theirs", JoinConference(SDP, None))
    ]
    ours = r.get("z-ours")
    assert ours is not None and ours.state is OneToOneState.RINGING


def test_no_glare_once_our_call_is_answered() -> None:
    r = room()
    r.ring(call_id="z-ours", invitee=ALICE, offer_sdp=SDP, now_ms=NOW)
    r.receive(ev("m.call.answer", build_answer("z-ours", "PHONE", SDP)), NOW)
    # A new call from the same user (another device) is a separate call, not glare: ours is untouched.
    assert r.receive(ev("m.call.invite", invite("a-theirs")), NOW) == [
        CallAction("a-theirs", JoinConference(SDP, None))
    ]
    ours = r.get("z-ours")
    assert ours is not None and ours.state is OneToOneState.CONNECTED


def test_ring_refused_while_a_call_with_that_user_is_active() -> None:
    r = room()
    r.receive(ev("m.call.invite", invite("c1")), NOW)
    assert r.ring(call_id="b1", invitee=ALICE, offer_sdp=SDP, now_ms=NOW) == [
        CallAction("b1", Ignore(f"a call with {ALICE} is already active (c1)"))
    ]
    with pytest.raises(ValueError, match="already used"):
        r.ring(call_id="c1", invitee="@bob:example.org", offer_sdp=SDP, now_ms=NOW)


def test_room_tick_expires_and_forgets() -> None:
    r = OneToOneRoom(room_id="!dm:example.org", bot_user_id=BOT, bot_party_id="BOTP", remember_ms=60_000)
    r.ring(call_id="b1", invitee=ALICE, offer_sdp=SDP, now_ms=NOW, lifetime_ms=10_000)
    assert r.deadline_ms == NOW + 10_000
    actions = r.tick(NOW + 10_000)
    assert [a.action for a in actions] == [
        SendEvent("m.call.hangup", build_hangup("b1", "BOTP", "invite_timeout")),
        EndCall("bot hung up (invite_timeout)"),
    ]
    assert r.deadline_ms is None and r.get("b1") is not None
    late = ev("m.call.answer", build_answer("b1", "PHONE", SDP))
    assert r.receive(late, NOW + 11_000) == [CallAction("b1", Ignore("call already ended"))]
    r.tick(NOW + 70_000)
    assert r.get("b1") is None
    assert r.receive(late, NOW + 70_000) == [CallAction("b1", Ignore("event for an unknown call"))]


def test_seen_event_ids_are_bounded() -> None:
    r = OneToOneRoom(room_id="!dm:example.org", bot_user_id=BOT, bot_party_id="BOTP", max_seen_events=2)
    for i in range(3):
        r.receive(ev("m.call.hangup", build_hangup(f"x{i}", "P"), event_id=f"${i}"), NOW)
    # $0 was forgotten (bounded memory), $2 is still known.
    assert r.receive(ev("m.call.hangup", build_hangup("x0", "P"), event_id="$0"), NOW) == [
        CallAction("x0", Ignore("event for an unknown call"))
    ]
    assert r.receive(ev("m.call.hangup", build_hangup("x2", "P"), event_id="$2"), NOW) == [
        CallAction("x2", Ignore("event $2 already handled"))
    ]
