"""Parsing and building of m.call.* content (spec VoIP module, MSC2746, MSC3077): tables of cases."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from visio_matrix.signaling import (
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallNegotiate,
    CallReject,
    CallSelectAnswer,
    CallStreamMetadataChanged,
    Candidate,
    EndOfCandidates,
    Limits,
    SignalingError,
    StreamMetadata,
    build_answer,
    build_candidates,
    build_hangup,
    build_invite,
    build_negotiate,
    build_reject,
    build_select_answer,
    build_stream_metadata_changed,
    message_content,
    parse_call_content,
)

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
HOST = "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host"
COMMON = {"call_id": "c123", "party_id": "PARTY1", "version": "1"}


def content(**fields: Any) -> dict[str, Any]:
    return {**COMMON, **fields}


INVITE = content(offer={"type": "offer", "sdp": SDP}, lifetime=60000)

VALID: list[tuple[str, str, dict[str, Any], object]] = [
    (
        "invite",
        "m.call.invite",
        INVITE,
        CallInvite("c123", "PARTY1", "1", 60000, SDP, None, None),
    ),
    (
        "invite with invitee and spec metadata",
        "m.call.invite",
        {
            **INVITE,
            "invitee": "@bot:example.org",
            "sdp_stream_metadata": {"s1": {"purpose": "m.usermedia", "video_muted": True}},
        },
        CallInvite(
            "c123",
            "PARTY1",
            "1",
            60000,
            SDP,
            "@bot:example.org",
            {"s1": StreamMetadata("m.usermedia", False, True)},
        ),
    ),
    (
        "invite with matrix-js-sdk's unstable metadata key, unknown purpose dropped",
        "m.call.invite",
        {
            **INVITE,
            "org.matrix.msc3077.sdp_stream_metadata": {
                "s1": {"purpose": "m.screenshare", "audio_muted": True},
                "s2": {"purpose": "org.example.hologram"},
            },
        },
        CallInvite(
            "c123", "PARTY1", "1", 60000, SDP, None, {"s1": StreamMetadata("m.screenshare", True, False)}
        ),
    ),
    (
        "legacy version 0 invite without party_id",
        "m.call.invite",
        {"call_id": "c1", "version": 0, "offer": {"type": "offer", "sdp": SDP}, "lifetime": 30000},
        CallInvite("c1", None, "0", 30000, SDP),
    ),
    (
        "future version string is treated as 1 (spec)",
        "m.call.invite",
        {**INVITE, "version": "2"},
        CallInvite("c123", "PARTY1", "1", 60000, SDP),
    ),
    (
        "numeric version 1 is treated as 1 (spec)",
        "m.call.hangup",
        content(version=1, reason="user_hangup"),
        CallHangup("c123", "PARTY1", "1", "user_hangup"),
    ),
    (
        "lifetime as an integral float",
        "m.call.invite",
        {**INVITE, "lifetime": 60000.0},
        CallInvite("c123", "PARTY1", "1", 60000, SDP),
    ),
    (
        "answer",
        "m.call.answer",
        content(answer={"type": "answer", "sdp": SDP}),
        CallAnswer("c123", "PARTY1", "1", SDP),
    ),
    (
        "candidates with the spec's bare end-of-candidates",
        "m.call.candidates",
        content(candidates=[{"candidate": HOST, "sdpMid": "0", "sdpMLineIndex": 0}, {"candidate": ""}]),
        CallCandidates("c123", "PARTY1", "1", (Candidate(HOST, "0", 0), EndOfCandidates())),
    ),
    (
        "candidates: end-of-candidates with mid, candidate with only an index, null mid",
        "m.call.candidates",
        content(
            candidates=[
                {"candidate": HOST, "sdpMid": None, "sdpMLineIndex": 1},
                {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
            ]
        ),
        CallCandidates("c123", "PARTY1", "1", (Candidate(HOST, None, 1), EndOfCandidates("0", 0))),
    ),
    (
        "empty candidates list",
        "m.call.candidates",
        content(candidates=[]),
        CallCandidates("c123", "PARTY1", "1", ()),
    ),
    (
        "select_answer",
        "m.call.select_answer",
        content(selected_party_id="OTHER"),
        CallSelectAnswer("c123", "PARTY1", "1", "OTHER"),
    ),
    ("reject", "m.call.reject", content(), CallReject("c123", "PARTY1", "1")),
    (
        "negotiate offer",
        "m.call.negotiate",
        content(description={"type": "offer", "sdp": SDP}, lifetime=10000),
        CallNegotiate("c123", "PARTY1", "1", "offer", SDP, 10000),
    ),
    (
        "negotiate answer without lifetime",
        "m.call.negotiate",
        content(description={"type": "answer", "sdp": SDP}),
        CallNegotiate("c123", "PARTY1", "1", "answer", SDP, None),
    ),
    (
        "hangup",
        "m.call.hangup",
        content(reason="ice_failed"),
        CallHangup("c123", "PARTY1", "1", "ice_failed"),
    ),
    ("hangup without reason = user_hangup", "m.call.hangup", content(), CallHangup("c123", "PARTY1", "1")),
    (
        "hangup with a non-spec reason kept",
        "m.call.hangup",
        content(reason="replaced"),
        CallHangup("c123", "PARTY1", "1", "replaced"),
    ),
    (
        "metadata changed under matrix-js-sdk's unstable event type",
        "org.matrix.call.sdp_stream_metadata_changed",
        content(
            **{
                "org.matrix.msc3077.sdp_stream_metadata": {
                    "s": {"purpose": "m.usermedia", "audio_muted": True}
                }
            }
        ),
        CallStreamMetadataChanged("c123", "PARTY1", "1", {"s": StreamMetadata("m.usermedia", True)}),
    ),
    (
        "metadata with user and device (conference extension)",
        "m.call.sdp_stream_metadata_changed",
        content(
            sdp_stream_metadata={"s": {"purpose": "m.usermedia", "user_id": "@a:b.c", "device_id": "DEV"}}
        ),
        CallStreamMetadataChanged(
            "c123", "PARTY1", "1", {"s": StreamMetadata("m.usermedia", user_id="@a:b.c", device_id="DEV")}
        ),
    ),
    (
        "unknown extra fields are ignored",
        "m.call.reject",
        content(capabilities={"m.call.transferee": False}, extra=[1, 2]),
        CallReject("c123", "PARTY1", "1"),
    ),
]


@pytest.mark.parametrize(("event_type", "raw", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_content(event_type: str, raw: dict[str, Any], expected: object) -> None:
    before = copy.deepcopy(raw)
    parsed = parse_call_content(event_type, raw)
    assert parsed == expected
    assert raw == before  # the input is not modified


BIG = 64 * 1024

INVALID: list[tuple[str, str, object, str, str]] = [
    (
        "content not an object",
        "m.call.invite",
        ["x"],
        "not_object",
        "content: expected an object, got an array",
    ),
    (
        "unknown event type",
        "m.room.message",
        {},
        "unknown_event_type",
        "'m.room.message' is not a call event type",
    ),
    (
        "missing call_id",
        "m.call.hangup",
        {"party_id": "p", "version": "1"},
        "missing_field",
        "call_id: missing",
    ),
    (
        "call_id not a string",
        "m.call.hangup",
        content(call_id=5),
        "bad_type",
        "call_id: expected a string, got a number",
    ),
    ("empty call_id", "m.call.hangup", content(call_id=""), "bad_value", "call_id: must not be empty"),
    (
        "call_id outside the spec grammar",
        "m.call.hangup",
        content(call_id="a b"),
        "bad_value",
        "call_id: only letters, digits and '._~-' are allowed",
    ),
    (
        "call_id too long",
        "m.call.hangup",
        content(call_id="a" * 256),
        "too_large",
        "call_id: longer than 255 characters",
    ),
    (
        "missing version",
        "m.call.hangup",
        {"call_id": "c", "party_id": "p"},
        "missing_field",
        "version: missing",
    ),
    (
        "version of a wrong type",
        "m.call.hangup",
        content(version=[1]),
        "bad_version",
        'version: expected "1" or 0, got an array',
    ),
    (
        "boolean version",
        "m.call.hangup",
        content(version=False),
        "bad_version",
        'version: expected "1" or 0, got a boolean',
    ),
    (
        "version 1 without party_id",
        "m.call.hangup",
        {"call_id": "c", "version": "1"},
        "missing_field",
        "party_id: missing",
    ),
    (
        "party_id null",
        "m.call.hangup",
        content(party_id=None),
        "bad_type",
        "party_id: expected a string, got null",
    ),
    ("missing offer", "m.call.invite", content(lifetime=1), "missing_field", "offer: missing"),
    (
        "offer not an object",
        "m.call.invite",
        content(offer="sdp", lifetime=1),
        "bad_type",
        "offer: expected an object, got a string",
    ),
    (
        "offer.sdp not a string",
        "m.call.invite",
        content(offer={"type": "offer", "sdp": 12}, lifetime=1),
        "bad_type",
        "offer.sdp: expected a string, got a number",
    ),
    (
        "offer.sdp missing",
        "m.call.invite",
        content(offer={"type": "offer"}, lifetime=1),
        "missing_field",
        "offer.sdp: missing",
    ),
    (
        "empty offer.sdp",
        "m.call.invite",
        content(offer={"sdp": " "}, lifetime=1),
        "bad_value",
        "offer.sdp: must not be empty",
    ),
    (
        "huge SDP",
        "m.call.invite",
        content(offer={"sdp": "a" * (BIG + 1)}, lifetime=1),
        "too_large",
        "offer.sdp: larger than 65536 bytes",
    ),
    (
        "SDP whose UTF-8 form exceeds the limit",
        "m.call.answer",
        content(answer={"sdp": "é" * (BIG // 2 + 1)}),
        "too_large",
        "answer.sdp: larger than 65536 bytes",
    ),
    ("missing lifetime", "m.call.invite", content(offer={"sdp": SDP}), "missing_field", "lifetime: missing"),
    (
        "lifetime a string",
        "m.call.invite",
        content(offer={"sdp": SDP}, lifetime="60"),
        "bad_type",
        "lifetime: expected an integer, got a string",
    ),
    (
        "lifetime a boolean",
        "m.call.invite",
        content(offer={"sdp": SDP}, lifetime=True),
        "bad_type",
        "lifetime: expected an integer, got a boolean",
    ),
    (
        "negative lifetime",
        "m.call.invite",
        content(offer={"sdp": SDP}, lifetime=-1),
        "bad_value",
        "lifetime: must be between 0 and 86400000",
    ),
    (
        "invitee not a user ID",
        "m.call.invite",
        {**INVITE, "invitee": "bob"},
        "bad_value",
        "invitee: not a Matrix user ID",
    ),
    (
        "metadata not an object",
        "m.call.invite",
        {**INVITE, "sdp_stream_metadata": []},
        "bad_type",
        "sdp_stream_metadata: expected an object, got an array",
    ),
    (
        "metadata entry without purpose",
        "m.call.invite",
        {**INVITE, "sdp_stream_metadata": {"s1": {"audio_muted": True}}},
        "missing_field",
        "sdp_stream_metadata.s1.purpose: missing",
    ),
    (
        "metadata mute flag not a boolean",
        "m.call.invite",
        {
            **INVITE,
            "org.matrix.msc3077.sdp_stream_metadata": {"s1": {"purpose": "m.usermedia", "audio_muted": "no"}},
        },
        "bad_type",
        "org.matrix.msc3077.sdp_stream_metadata.s1.audio_muted: expected a boolean, got a string",
    ),
    (
        "too many streams",
        "m.call.invite",
        {**INVITE, "sdp_stream_metadata": {f"s{i}": {"purpose": "m.usermedia"} for i in range(65)}},
        "too_large",
        "sdp_stream_metadata: more than 64 streams",
    ),
    (
        "candidates not a list",
        "m.call.candidates",
        content(candidates={}),
        "bad_type",
        "candidates: expected an array, got an object",
    ),
    (
        "too many candidates",
        "m.call.candidates",
        content(candidates=[{"candidate": HOST, "sdpMid": "0"}] * 201),
        "too_large",
        "candidates: more than 200 candidates",
    ),
    (
        "candidate entry not an object",
        "m.call.candidates",
        content(candidates=[{"candidate": ""}, "x"]),
        "bad_type",
        "candidates[1]: expected an object, got a string",
    ),
    (
        "candidate missing",
        "m.call.candidates",
        content(candidates=[{"sdpMid": "0"}]),
        "missing_field",
        "candidates[0].candidate: missing",
    ),
    (
        "sdpMLineIndex a string",
        "m.call.candidates",
        content(candidates=[{"candidate": HOST, "sdpMLineIndex": "0"}]),
        "bad_type",
        "candidates[0].sdpMLineIndex: expected an integer, got a string",
    ),
    (
        "real candidate without mid or index",
        "m.call.candidates",
        content(candidates=[{"candidate": HOST}]),
        "missing_field",
        "candidates[0]: needs sdpMid or sdpMLineIndex",
    ),
    (
        "candidate line too long",
        "m.call.candidates",
        content(candidates=[{"candidate": "a" * 1025, "sdpMid": "0"}]),
        "too_large",
        "candidates[0].candidate: longer than 1024 characters",
    ),
    (
        "candidate with a control character",
        "m.call.candidates",
        content(candidates=[{"candidate": HOST + "\r\na=evil", "sdpMid": "0"}]),
        "bad_value",
        "candidates[0].candidate: contains control characters",
    ),
    (
        "select_answer without selected_party_id",
        "m.call.select_answer",
        content(),
        "missing_field",
        "selected_party_id: missing",
    ),
    (
        "negotiate with a bad description type",
        "m.call.negotiate",
        content(description={"type": "pranswer", "sdp": SDP}),
        "bad_value",
        'description.type: expected "offer" or "answer"',
    ),
    (
        "hangup reason a number",
        "m.call.hangup",
        content(reason=3),
        "bad_type",
        "reason: expected a string, got a number",
    ),
    (
        "metadata changed without metadata",
        "m.call.sdp_stream_metadata_changed",
        content(),
        "missing_field",
        "sdp_stream_metadata: missing",
    ),
]


@pytest.mark.parametrize(
    ("event_type", "raw", "code", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_content(event_type: str, raw: object, code: str, message: str) -> None:
    parsed = parse_call_content(event_type, raw)
    assert parsed == SignalingError(code, message)


def test_strict_version_refuses_anything_but_1() -> None:
    assert parse_call_content("m.call.reject", content(version="2"), strict_version=True) == SignalingError(
        "bad_version", "version: expected \"1\" or 0, got '2'"
    )
    assert isinstance(parse_call_content("m.call.reject", content(), strict_version=True), CallReject)


def test_limits_are_configurable() -> None:
    small = Limits(max_sdp_bytes=10, max_candidates=1)
    assert parse_call_content("m.call.answer", content(answer={"sdp": SDP}), limits=small) == SignalingError(
        "too_large", "answer.sdp: larger than 10 bytes"
    )
    two = content(candidates=[{"candidate": ""}, {"candidate": ""}])
    assert parse_call_content("m.call.candidates", two, limits=small) == SignalingError(
        "too_large", "candidates: more than 1 candidates"
    )


def test_hostile_nesting_does_not_raise() -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(5000):
        cursor["x"] = {}
        cursor = cursor["x"]
    raw = {**INVITE, "sdp_stream_metadata": {"s": deep}}
    # A deeply nested (unused) value costs nothing: only known fields are read.
    result = parse_call_content("m.call.invite", raw)
    assert result == SignalingError("missing_field", "sdp_stream_metadata.s.purpose: missing")


BUILT: list[tuple[str, str, dict[str, Any], object]] = [
    (
        "invite",
        "m.call.invite",
        build_invite(
            "c1",
            "P",
            SDP,
            90000,
            invitee="@u:example.org",
            stream_metadata={"s": StreamMetadata("m.usermedia")},
        ),
        CallInvite("c1", "P", "1", 90000, SDP, "@u:example.org", {"s": StreamMetadata("m.usermedia")}),
    ),
    ("answer", "m.call.answer", build_answer("c1", "P", SDP), CallAnswer("c1", "P", "1", SDP)),
    (
        "candidates",
        "m.call.candidates",
        build_candidates("c1", "P", (Candidate(HOST, "0", 0), EndOfCandidates())),
        CallCandidates("c1", "P", "1", (Candidate(HOST, "0", 0), EndOfCandidates())),
    ),
    (
        "select_answer",
        "m.call.select_answer",
        build_select_answer("c1", "P", "Q"),
        CallSelectAnswer("c1", "P", "1", "Q"),
    ),
    ("reject", "m.call.reject", build_reject("c1", "P"), CallReject("c1", "P", "1")),
    (
        "negotiate",
        "m.call.negotiate",
        build_negotiate("c1", "P", "offer", SDP, lifetime_ms=5000),
        CallNegotiate("c1", "P", "1", "offer", SDP, 5000),
    ),
    (
        "hangup",
        "m.call.hangup",
        build_hangup("c1", "P", "invite_timeout"),
        CallHangup("c1", "P", "1", "invite_timeout"),
    ),
    (
        "metadata changed",
        "m.call.sdp_stream_metadata_changed",
        build_stream_metadata_changed(
            "c1", "P", {"s": StreamMetadata("m.usermedia", True, True, "@a:b.c", "D")}
        ),
        CallStreamMetadataChanged(
            "c1", "P", "1", {"s": StreamMetadata("m.usermedia", True, True, "@a:b.c", "D")}
        ),
    ),
]


@pytest.mark.parametrize(
    ("event_type", "built", "expected"), [c[1:] for c in BUILT], ids=[c[0] for c in BUILT]
)
def test_builders_round_trip(event_type: str, built: dict[str, Any], expected: object) -> None:
    assert built["version"] == "1" and built["party_id"] and built["call_id"]
    assert parse_call_content(event_type, built) == expected
    assert isinstance(
        expected,
        (
            CallInvite,
            CallAnswer,
            CallCandidates,
            CallSelectAnswer,
            CallReject,
            CallNegotiate,
            CallHangup,
            CallStreamMetadataChanged,
        ),
    )
    assert message_content(expected) == (event_type, built)


def test_builders_write_exact_wire_shapes() -> None:
    assert build_candidates("c1", "P", (EndOfCandidates(),)) == {
        "call_id": "c1",
        "party_id": "P",
        "version": "1",
        "candidates": [{"candidate": ""}],
    }
    invite = build_invite("c1", "P", SDP, 60000, stream_metadata={"s": StreamMetadata("m.screenshare")})
    assert invite["offer"] == {"type": "offer", "sdp": SDP}
    # Element (matrix-js-sdk) reads only the unstable key; the spec's key is written too.
    entry = {"purpose": "m.screenshare", "audio_muted": False, "video_muted": False}
    assert invite["sdp_stream_metadata"] == invite["org.matrix.msc3077.sdp_stream_metadata"] == {"s": entry}
    assert "org.matrix.msc3077.sdp_stream_metadata" not in build_answer(
        "c1", "P", SDP, stream_metadata={}, unstable_key=False
    )


def test_message_content_needs_a_party_id() -> None:
    with pytest.raises(ValueError, match="party_id is required"):
        message_content(CallReject("c1", None, "0"))


def test_parsed_messages_are_hashable_and_frozen() -> None:
    parsed = parse_call_content(
        "m.call.invite", {**INVITE, "sdp_stream_metadata": {"s": {"purpose": "m.usermedia"}}}
    )
    assert isinstance(parsed, CallInvite)
    hash(parsed)
    with pytest.raises(AttributeError):
        parsed.call_id = "other"  # type: ignore[misc]
    assert parsed.stream_metadata is not None
    with pytest.raises(TypeError):
        parsed.stream_metadata["t"] = StreamMetadata("m.usermedia")  # type: ignore[index]
