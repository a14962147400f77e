"""Conference signaling over to-device: wire format (group fields) and the bot's per-call state machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from visio_matrix.signaling import (
    CallHangup,
    CallInvite,
    Candidate,
    ConferenceMessage,
    EndOfCandidates,
    GroupFields,
    SignalingError,
    StreamMetadata,
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
        bot_party_id="BOTPARTY",
        bot_device_id="BOTDEVICE",
        bot_session_id="botsession1",
        visio_reason=VisioReason.UNVERIFIED_DEVICE,
    )
    assert event_type == "m.call.hangup"
    message = parsed(event_type, content)
    assert message.group == GroupFields("", "BOTDEVICE", "botsession1", "alicesession", 0)
    assert message.visio_reason == "unverified_device" and message.call_id == "call1"


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
