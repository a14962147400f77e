"""Conference signaling over to-device: wire format (group fields) and the bot's per-call state machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from visio_matrix.signaling import (
    AcceptAnswer,
    AddCandidates,
    ApplyOffer,
    BotEndpoint,
    CallAnswer,
    CallHangup,
    CallInvite,
    Candidate,
    ConferenceCallState,
    ConferenceMessage,
    ConferenceState,
    EndCall,
    EndOfCandidates,
    GroupFields,
    Ignore,
    JoinConference,
    MakeOffer,
    SendEvent,
    SignalingError,
    StreamMetadata,
    UpdateStreams,
    VisioReason,
    build_conference_answer,
    build_conference_candidates,
    build_conference_hangup,
    build_conference_invite,
    build_conference_negotiate,
    build_conference_reject,
    build_conference_stream_metadata_changed,
    invite_expired,
    parse_conference_message,
    refuse_invite,
)
from visio_matrix.signaling.messages import SPEC_HANGUP_REASONS

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
HOST = "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host"
ROOM = "!room:example.org"
BOT = BotEndpoint(party_id="BOTPARTY", device_id="BOTDEVICE", session_id="botsession1")
NOW = 1_700_000_000_000


def group(
    seq: int, *, conf_id: str = "", dest: str = "", sender: str = "alicesession", device: str = "ALICEDEV"
) -> GroupFields:
    return GroupFields(conf_id, device, sender, dest, seq)


def parsed(event_type: str, content: dict[str, Any]) -> ConferenceMessage:
    message = parse_conference_message(event_type, content)
    assert isinstance(message, ConferenceMessage), message
    return message


def participant_invite(seq: int = 0, lifetime_ms: int = 60000) -> ConferenceMessage:
    metadata = {"alice-stream": StreamMetadata("m.usermedia", audio_muted=True)}
    content = build_conference_invite(
        "call1", "ALICE", group(seq), ROOM, SDP, lifetime_ms, stream_metadata=metadata
    )
    return parsed("m.call.invite", content)


# -- wire format --------------------------------------------------------------------------------------------


def test_invite_round_trip_and_exact_fields() -> None:
    content = build_conference_invite(
        "call1",
        "ALICE",
        group(3, conf_id="conf1", dest="botsession1"),
        ROOM,
        SDP,
        60000,
        stream_metadata={"s": StreamMetadata("m.usermedia")},
        replaces="call0",
    )
    assert content == {
        "call_id": "call1",
        "party_id": "ALICE",
        "version": "1",
        "offer": {"type": "offer", "sdp": SDP},
        "lifetime": 60000,
        "sdp_stream_metadata": {"s": {"purpose": "m.usermedia", "audio_muted": False, "video_muted": False}},
        "room_id": ROOM,
        "io.visio.replaces": "call0",
        "conf_id": "conf1",
        "device_id": "ALICEDEV",
        "sender_session_id": "alicesession",
        "dest_session_id": "botsession1",
        "seq": 3,
    }
    message = parsed("m.call.invite", content)
    assert message.room_id == ROOM and message.replaces == "call0"
    assert message.group == group(3, conf_id="conf1", dest="botsession1")
    assert isinstance(message.message, CallInvite) and message.message.offer_sdp == SDP
    assert (
        message.call_id == "call1" and message.party_id == "ALICE" and message.event_type == "m.call.invite"
    )


def test_bot_hangup_carries_visio_reason_and_sentence() -> None:
    content = build_conference_hangup(
        "call1", "BOTPARTY", group(1, conf_id="conf1"), VisioReason.NOT_A_MEMBER
    )
    assert content["reason"] == "unknown_error"
    assert content["io.visio.reason"] == "not_a_member"
    assert content["io.visio.message"] == "You are not a member of this room."
    message = parsed("m.call.hangup", content)
    assert (
        message.visio_reason == "not_a_member"
        and message.visio_message == "You are not a member of this room."
    )
    assert isinstance(message.message, CallHangup) and message.message.reason == "unknown_error"
    expired = build_conference_hangup("c", "P", group(0), VisioReason.INVITE_EXPIRED, "Too late.")
    assert (expired["reason"], expired["io.visio.message"]) == ("invite_timeout", "Too late.")
    plain = build_conference_hangup("c", "P", group(0))
    assert plain["reason"] == "user_hangup" and "io.visio.reason" not in plain


@pytest.mark.parametrize(
    "content",
    [
        build_conference_answer("call1", "BOTPARTY", group(0, conf_id="conf1"), SDP),
        build_conference_candidates("call1", "ALICE", group(1), (Candidate(HOST, "0", 0), EndOfCandidates())),
        build_conference_negotiate("call1", "ALICE", group(2), "offer", SDP, lifetime_ms=1000),
        build_conference_reject("call1", "ALICE", group(0)),
        build_conference_stream_metadata_changed(
            "call1", "ALICE", group(4), {"s": StreamMetadata("m.usermedia")}
        ),
    ],
    ids=["answer", "candidates", "negotiate", "reject", "metadata"],
)
def test_builders_parse_back(content: dict[str, Any]) -> None:
    event_type = {
        "answer": "m.call.answer",
        "candidates": "m.call.candidates",
        "description": "m.call.negotiate",
        "sdp_stream_metadata": "m.call.sdp_stream_metadata_changed",
    }
    kind = next((event_type[key] for key in event_type if key in content), "m.call.reject")
    message = parsed(kind, content)
    assert message.group.seq == content["seq"] and message.room_id is None
    assert "org.matrix.msc3077.sdp_stream_metadata" not in content


def invite_content(**changes: Any) -> dict[str, Any]:
    content = build_conference_invite("call1", "ALICE", group(0), ROOM, SDP, 60000)
    for key, value in changes.items():
        if value is None:
            content.pop(key)
        else:
            content[key] = value
    return content


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "version must be exactly '1'",
        invite_content(version="2"),
        "bad_version",
        "version: expected \"1\" or 0, got '2'",
    ),
    ("missing room_id", invite_content(room_id=None), "missing_field", "room_id: missing"),
    (
        "room_id not a room ID",
        invite_content(room_id="#alias:x"),
        "bad_value",
        "room_id: not a Matrix room ID",
    ),
    ("missing conf_id", invite_content(conf_id=None), "missing_field", "conf_id: missing"),
    (
        "conf_id bad grammar",
        invite_content(conf_id="a/b"),
        "bad_value",
        "conf_id: only letters, digits and '._~-' are allowed",
    ),
    ("missing device_id", invite_content(device_id=None), "missing_field", "device_id: missing"),
    (
        "missing sender_session_id",
        invite_content(sender_session_id=None),
        "missing_field",
        "sender_session_id: missing",
    ),
    (
        "empty sender_session_id",
        invite_content(sender_session_id=""),
        "bad_value",
        "sender_session_id: must not be empty",
    ),
    (
        "dest_session_id a number",
        invite_content(dest_session_id=4),
        "bad_type",
        "dest_session_id: expected a string, got a number",
    ),
    ("missing seq", invite_content(seq=None), "missing_field", "seq: missing"),
    ("seq a string", invite_content(seq="1"), "bad_type", "seq: expected an integer, got a string"),
    ("negative seq", invite_content(seq=-1), "bad_value", "seq: must be between 0 and 9007199254740991"),
    (
        "replaces bad grammar",
        invite_content(**{"io.visio.replaces": "x y"}),
        "bad_value",
        "io.visio.replaces: only letters, digits and '._~-' are allowed",
    ),
    ("bad sdp", invite_content(offer={"sdp": None}), "bad_type", "offer.sdp: expected a string, got null"),
]


@pytest.mark.parametrize(("content", "code", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_conference_content(content: dict[str, Any], code: str, message: str) -> None:
    assert parse_conference_message("m.call.invite", content) == SignalingError(code, message)


def test_non_invite_messages_need_no_room_id() -> None:
    hangup = build_conference_hangup("call1", "ALICE", group(5), reason="user_hangup")
    assert parsed("m.call.hangup", hangup).room_id is None
    bad = {**hangup, "io.visio.reason": 7}
    assert parse_conference_message("m.call.hangup", bad) == SignalingError(
        "bad_type", "io.visio.reason: expected a string, got a number"
    )


@pytest.mark.parametrize(("age", "expired"), [(0, False), (59_999, False), (60_000, True), (10**9, True)])
def test_invite_expired(age: int, expired: bool) -> None:
    invite = participant_invite()
    assert invite_expired(invite, age) is expired
    assert isinstance(invite.message, CallInvite)
    assert invite_expired(invite.message, age) is expired


def test_invite_expired_refuses_other_messages() -> None:
    with pytest.raises(ValueError, match=r"expected an m\.call\.invite"):
        invite_expired(parsed("m.call.hangup", build_conference_hangup("c", "P", group(0))), 0)


def test_refuse_invite_answers_the_participant_session() -> None:
    event_type, content = refuse_invite(
        participant_invite(),
        bot_party_id=BOT.party_id,
        bot_device_id=BOT.device_id,
        bot_session_id=BOT.session_id,
        visio_reason=VisioReason.UNVERIFIED_DEVICE,
    )
    assert event_type == "m.call.hangup"
    message = parsed(event_type, content)
    assert message.group == GroupFields("", "BOTDEVICE", "botsession1", "alicesession", 0)
    assert message.visio_reason == "unverified_device" and message.call_id == "call1"


# -- the bot's per-call state machine ---------------------------------------------------------------------


def from_participant(event_type: str, seq: int, **fields: Any) -> ConferenceMessage:
    base: dict[str, Any] = {"call_id": "call1", "party_id": "ALICE", "version": "1", **fields}
    g = group(seq, conf_id="conf1", dest=BOT.session_id)
    for key, value in {
        "conf_id": g.conf_id,
        "device_id": g.device_id,
        "sender_session_id": g.sender_session_id,
        "dest_session_id": g.dest_session_id,
        "seq": g.seq,
    }.items():
        base.setdefault(key, value)
    return parsed(event_type, base)


def candidates(seq: int, *entries: dict[str, Any]) -> ConferenceMessage:
    return from_participant("m.call.candidates", seq, candidates=list(entries))


CAND = {"candidate": HOST, "sdpMid": "0", "sdpMLineIndex": 0}


def joined_call() -> tuple[ConferenceCallState, list[Any]]:
    call, actions = ConferenceCallState.from_invite(participant_invite(), BOT, now_ms=NOW)
    return call, actions


def connected_call() -> ConferenceCallState:
    call, _ = joined_call()
    call.answer_ready(SDP, conf_id="conf1", stream_metadata={})
    return call


def sent(actions: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(a.event_type, a.content) for a in actions if isinstance(a, SendEvent)]


def test_join_flow_buffers_candidates_until_answered() -> None:
    call, actions = joined_call()
    assert actions == [
        JoinConference(SDP, {"alice-stream": StreamMetadata("m.usermedia", True)}, ROOM, ""),
    ]
    assert call.state is ConferenceState.JOINING and call.deadline_ms == NOW + 60000
    assert call.receive(candidates(1, CAND), NOW) == []
    assert call.receive(candidates(2, {"candidate": ""}), NOW) == []
    streams = {"bob-stream": StreamMetadata("m.usermedia", user_id="@bob:example.org", device_id="BOBDEV")}
    actions = call.answer_ready(SDP, conf_id="conf1", stream_metadata=streams)
    assert call.state is ConferenceState.CONNECTED and call.deadline_ms is None
    [(event_type, content)] = sent(actions)
    assert event_type == "m.call.answer"
    answer = parsed(event_type, content)
    assert answer.group == GroupFields("conf1", "BOTDEVICE", "botsession1", "alicesession", 0)
    assert isinstance(answer.message, CallAnswer) and answer.message.stream_metadata == streams
    assert actions[1:] == [AddCandidates((Candidate(HOST, "0", 0), EndOfCandidates()))]
    assert call.receive(candidates(3, CAND), NOW) == [AddCandidates((Candidate(HOST, "0", 0),))]


ENVELOPE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("other call", {"call_id": "call2"}, "message for call call2, not call1"),
    (
        "stale bot session",
        {"dest_session_id": "oldbotsession"},
        "dest_session_id names another session of the bot (stale message)",
    ),
    (
        "other participant session",
        {"sender_session_id": "othersession"},
        "sender_session_id is not the participant's session for this call",
    ),
    ("other party", {"party_id": "MALLORY"}, "party_id is not the participant's party for this call"),
    ("duplicate seq", {"seq": 0}, "seq 0 not above 0 (duplicate or reordered)"),
]


@pytest.mark.parametrize(
    ("changes", "why"), [c[1:] for c in ENVELOPE_CASES], ids=[c[0] for c in ENVELOPE_CASES]
)
def test_envelope_checks(changes: dict[str, Any], why: str) -> None:
    call, _ = joined_call()
    message = from_participant("m.call.candidates", changes.pop("seq", 1), candidates=[CAND], **changes)
    assert call.receive(message, NOW) == [Ignore(why)]


def test_seq_must_increase_gaps_allowed() -> None:
    call = connected_call()
    assert call.receive(candidates(5, CAND), NOW) == [AddCandidates((Candidate(HOST, "0", 0),))]
    assert call.receive(candidates(5, CAND), NOW) == [Ignore("seq 5 not above 5 (duplicate or reordered)")]
    assert call.receive(candidates(4, CAND), NOW) == [Ignore("seq 4 not above 5 (duplicate or reordered)")]
    # An empty dest_session_id (participant did not know the bot's session yet) is accepted.
    early = from_participant("m.call.candidates", 6, candidates=[CAND], dest_session_id="")
    assert call.receive(early, NOW) == [AddCandidates((Candidate(HOST, "0", 0),))]


def test_bot_seq_increases_per_message() -> None:
    call = connected_call()
    actions = call.streams_changed()
    assert actions == [MakeOffer()]
    offer = call.send_offer(SDP, stream_metadata={}, now_ms=NOW)
    hangup = call.hangup(VisioReason.CONFERENCE_ENDED)
    seqs = [content["seq"] for _, content in sent(offer + hangup)]
    assert seqs == [1, 2]  # the answer was seq 0


def test_expired_invite_is_hung_up_without_joining() -> None:
    call, actions = ConferenceCallState.from_invite(
        participant_invite(lifetime_ms=1000), BOT, now_ms=NOW, received_age_ms=1000
    )
    assert call.ended
    [(event_type, content)] = sent(actions)
    assert len(actions) == 1 and event_type == "m.call.hangup"
    assert content["io.visio.reason"] == "invite_expired" and content["reason"] == "invite_timeout"


def test_invite_lifetime_counts_from_reception() -> None:
    call, _ = ConferenceCallState.from_invite(
        participant_invite(lifetime_ms=10_000), BOT, now_ms=NOW, received_age_ms=4000
    )
    assert call.deadline_ms == NOW + 6000
    assert call.tick(NOW + 5999) == []
    actions = call.tick(NOW + 6000)
    assert [a for a in actions if isinstance(a, EndCall)] == [EndCall("invite lifetime over while joining")]
    assert sent(actions)[0][1]["io.visio.reason"] == "invite_expired"
    assert call.answer_ready(SDP, conf_id="conf1", stream_metadata=None) == [
        Ignore("answer_ready in state ended")
    ]


def test_bot_renegotiation_and_queued_offer() -> None:
    call = connected_call()
    assert call.streams_changed() == [MakeOffer()]
    assert call.bot_offer_pending
    # Streams change again while the first offer is being made: remembered, no second MakeOffer yet.
    assert call.streams_changed() == []
    metadata = {"carol": StreamMetadata("m.usermedia", user_id="@carol:example.org", device_id="C")}
    [(event_type, content)] = sent(
        call.send_offer(SDP, stream_metadata=metadata, now_ms=NOW, lifetime_ms=5000)
    )
    assert (event_type, content["description"]["type"], content["lifetime"]) == (
        "m.call.negotiate",
        "offer",
        5000,
    )
    assert call.deadline_ms == NOW + 5000
    answer = from_participant("m.call.negotiate", 1, description={"type": "answer", "sdp": SDP})
    assert call.receive(answer, NOW) == [AcceptAnswer(SDP), MakeOffer()]
    # The remembered change is served: a second offer goes out, with the next seq.
    [(event_type, content)] = sent(call.send_offer(SDP, stream_metadata=metadata, now_ms=NOW))
    assert (event_type, content["description"]["type"], content["seq"]) == ("m.call.negotiate", "offer", 2)
    assert call.streams_changed() == []  # that offer is out and unanswered


def test_participant_offer_is_applied_and_answered() -> None:
    call = connected_call()
    offer = from_participant("m.call.negotiate", 1, description={"type": "offer", "sdp": SDP}, lifetime=10000)
    assert call.receive(offer, NOW) == [ApplyOffer(SDP)]
    # Streams change while the participant's offer is being answered: the bot offers after its answer.
    assert call.streams_changed() == []
    again = from_participant("m.call.negotiate", 2, description={"type": "offer", "sdp": SDP})
    assert call.receive(again, NOW) == [
        Ignore("participant offered again before the bot answered its previous offer")
    ]
    actions = call.negotiate_answer_ready(SDP)
    [(event_type, content)] = sent(actions)
    assert (event_type, content["description"]["type"]) == ("m.call.negotiate", "answer")
    assert actions[-1] == MakeOffer()
    assert call.negotiate_answer_ready(SDP) == [
        Ignore("negotiate_answer_ready without a participant offer in progress")
    ]


def test_crossing_offers_the_bot_wins() -> None:
    call = connected_call()
    call.streams_changed()
    call.send_offer(SDP, stream_metadata={}, now_ms=NOW)
    crossing = from_participant("m.call.negotiate", 1, description={"type": "offer", "sdp": SDP})
    assert call.receive(crossing, NOW) == [
        Ignore("participant offer crossed the bot's offer: the bot's offer wins")
    ]
    answer = from_participant("m.call.negotiate", 2, description={"type": "answer", "sdp": SDP})
    assert call.receive(answer, NOW) == [AcceptAnswer(SDP)]
    # The participant then offers again, and this time it is applied.
    retry = from_participant("m.call.negotiate", 3, description={"type": "offer", "sdp": SDP})
    assert call.receive(retry, NOW) == [ApplyOffer(SDP)]


def test_offer_crossing_a_bot_offer_still_being_made_is_ignored() -> None:
    call = connected_call()
    assert call.streams_changed() == [MakeOffer()]
    crossing = from_participant("m.call.negotiate", 1, description={"type": "offer", "sdp": SDP})
    assert call.receive(crossing, NOW) == [
        Ignore("participant offer crossed the bot's offer: the bot's offer wins")
    ]
    call.cancel_offer()
    assert not call.bot_offer_pending
    assert call.receive(
        from_participant("m.call.negotiate", 2, description={"type": "offer", "sdp": SDP}), NOW
    ) == [ApplyOffer(SDP)]


def test_unexpected_negotiation_inputs() -> None:
    call, _ = joined_call()
    offer = from_participant("m.call.negotiate", 1, description={"type": "offer", "sdp": SDP})
    assert call.receive(offer, NOW) == [Ignore("m.call.negotiate before the call is connected")]
    call.answer_ready(SDP, conf_id="conf1", stream_metadata=None)
    answer = from_participant("m.call.negotiate", 2, description={"type": "answer", "sdp": SDP})
    assert call.receive(answer, NOW) == [Ignore("negotiate answer without a bot offer out")]
    assert call.send_offer(SDP, stream_metadata={}, now_ms=NOW) == [
        Ignore("send_offer without a MakeOffer pending")
    ]


def test_unanswered_bot_offer_ends_the_call() -> None:
    call = connected_call()
    call.streams_changed()
    call.send_offer(SDP, stream_metadata={}, now_ms=NOW, lifetime_ms=3000)
    assert call.tick(NOW + 2999) == []
    actions = call.tick(NOW + 3000)
    assert sent(actions)[0][1]["io.visio.reason"] == "media_failed"
    assert actions[-1] == EndCall("bot offer not answered") and call.ended


def test_participant_hangup_and_late_messages() -> None:
    call = connected_call()
    hangup = from_participant("m.call.hangup", 1, reason="user_hangup")
    assert call.receive(hangup, NOW) == [EndCall("participant hung up (user_hangup)")]
    assert call.receive(candidates(2, CAND), NOW) == [Ignore("call already ended")]
    assert call.hangup(VisioReason.CONFERENCE_ENDED) == []
    assert call.tick(NOW + 10**9) == []


def test_other_messages_in_a_call() -> None:
    call = connected_call()
    metadata = from_participant(
        "m.call.sdp_stream_metadata_changed",
        1,
        sdp_stream_metadata={"a": {"purpose": "m.usermedia", "video_muted": True}},
    )
    assert call.receive(metadata, NOW) == [
        UpdateStreams({"a": StreamMetadata("m.usermedia", video_muted=True)})
    ]
    assert call.remote_streams == {"a": StreamMetadata("m.usermedia", video_muted=True)}
    assert call.receive(from_participant("m.call.reject", 2), NOW) == [
        Ignore("m.call.reject outside a re-invite")
    ]
    assert call.receive(from_participant("m.call.select_answer", 3, selected_party_id="X"), NOW) == [
        Ignore("m.call.select_answer is not used in conferences")
    ]
    duplicate = from_participant("m.call.invite", 4, offer={"sdp": SDP}, lifetime=1000, room_id=ROOM)
    assert call.receive(duplicate, NOW) == [Ignore("duplicate m.call.invite")]
    [(event_type, content)] = sent(
        call.metadata_changed({"b": StreamMetadata("m.usermedia", audio_muted=True)})
    )
    assert (
        event_type == "m.call.sdp_stream_metadata_changed"
        and content["sdp_stream_metadata"]["b"]["audio_muted"]
    )


def test_bot_hangup() -> None:
    call = connected_call()
    actions = call.hangup(VisioReason.CONFERENCE_ENDED, "The meeting is over.")
    [(event_type, content)] = sent(actions)
    assert event_type == "m.call.hangup"
    assert (content["reason"], content["io.visio.reason"], content["io.visio.message"]) == (
        "user_hangup",
        "conference_ended",
        "The meeting is over.",
    )
    assert actions[-1] == EndCall("bot hung up (conference_ended)") and call.ended


# -- re-invite after a restart ----------------------------------------------------------------------------


def reinvited() -> tuple[ConferenceCallState, list[Any]]:
    return ConferenceCallState.reinvite(
        call_id="call9",
        replaces="call1",
        room_id=ROOM,
        conf_id="conf1",
        bot=BotEndpoint("BOTPARTY2", "BOTDEVICE", "botsession2"),
        participant_session_id="alicesession",
        offer_sdp=SDP,
        stream_metadata={"s": StreamMetadata("m.usermedia", user_id="@bob:example.org", device_id="B")},
        now_ms=NOW,
        lifetime_ms=20000,
    )


def answer_to_reinvite(seq: int = 0, **changes: Any) -> ConferenceMessage:
    content = build_conference_answer(
        "call9", "ALICE2", GroupFields("conf1", "ALICEDEV", "alicesession", "botsession2", seq), SDP
    )
    content.update(changes)
    return parsed("m.call.answer", content)


def test_reinvite_flow() -> None:
    call, actions = reinvited()
    [(event_type, content)] = sent(actions)
    invite = parsed(event_type, content)
    assert invite.replaces == "call1" and invite.room_id == ROOM
    assert invite.group == GroupFields("conf1", "BOTDEVICE", "botsession2", "alicesession", 0)
    assert call.state is ConferenceState.RINGING
    # Candidates before the answer are buffered; the answer fixes the participant's party.
    early = build_conference_candidates(
        "call9",
        "ALICE2",
        GroupFields("conf1", "ALICEDEV", "alicesession", "botsession2", 0),
        (EndOfCandidates(),),
    )
    assert call.receive(parsed("m.call.candidates", early), NOW) == []
    assert call.receive(answer_to_reinvite(1), NOW) == [
        AcceptAnswer(SDP),
        AddCandidates((EndOfCandidates(),)),
    ]
    assert call.state is ConferenceState.CONNECTED and call.remote_party_id == "ALICE2"
    assert call.receive(answer_to_reinvite(2), NOW) == [Ignore("m.call.answer but the bot is not ringing")]


def test_reinvite_rejected_or_expired() -> None:
    call, _ = reinvited()
    reject = build_conference_reject(
        "call9", "ALICE2", GroupFields("conf1", "ALICEDEV", "alicesession", "botsession2", 0)
    )
    assert call.receive(parsed("m.call.reject", reject), NOW) == [
        EndCall("participant rejected the re-invite")
    ]
    call, _ = reinvited()
    assert call.tick(NOW + 19999) == []
    actions = call.tick(NOW + 20000)
    assert sent(actions)[0][1]["io.visio.reason"] == "invite_expired"
    assert actions[-1] == EndCall("invite lifetime over while ringing")


def test_reinvite_answer_for_a_previous_bot_run_is_ignored() -> None:
    call, _ = reinvited()
    stale = answer_to_reinvite(0, dest_session_id="botsession1")
    assert call.receive(stale, NOW) == [
        Ignore("dest_session_id names another session of the bot (stale message)")
    ]


@pytest.mark.parametrize("code", list(VisioReason))
def test_every_visio_reason_has_a_spec_reason_a_sentence_and_a_doc_row(code: VisioReason) -> None:
    content = build_conference_hangup("c", "P", group(0), code)
    assert content["reason"] in SPEC_HANGUP_REASONS
    assert content["io.visio.reason"] == code.value and content["io.visio.message"].endswith(".")
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    assert f"| `{code.value}` | `{content['reason']}` |" in doc


def doc_examples() -> list[dict[str, Any]]:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    blocks = [block.split("```", 1)[0] for block in doc.split("```json\n")[1:]]
    examples = []
    for block in blocks:
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            continue  # a fragment (the discovery field), not a whole message
        if isinstance(value, dict) and "call_id" in value:
            examples.append(value)
    return examples


EXAMPLE_TYPES = {
    "offer": "m.call.invite",
    "answer": "m.call.answer",
    "candidates": "m.call.candidates",
    "description": "m.call.negotiate",
    "reason": "m.call.hangup",
}


def test_doc_examples_are_valid_messages() -> None:
    examples = doc_examples()
    kinds = set()
    for example in examples:
        event_type = next(t for key, t in EXAMPLE_TYPES.items() if key in example)
        kinds.add(event_type)
        assert isinstance(parse_conference_message(event_type, example), ConferenceMessage), example
    assert kinds == set(EXAMPLE_TYPES.values())
