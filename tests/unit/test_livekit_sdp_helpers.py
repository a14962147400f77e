"""The LiveKit signaling's pure helpers: join request parameter, candidates, answer msids."""

from __future__ import annotations

import base64
import gzip

import pytest
from livekit.protocol import models, rtc

from visio_matrix.focus.livekit_sdp import (
    MAX_JOIN_REQUEST_BYTES,
    CandidateInit,
    JoinRequestError,
    decode_join_request,
    encode_join_request,
    parse_candidate_init,
    rewrite_msids,
    section_codecs,
    sending_mids,
)

JOIN = rtc.JoinRequest(
    client_info=models.ClientInfo(sdk=models.ClientInfo.JS, version="2.23.0", protocol=17),
    publisher_offer=rtc.SessionDescription(type="offer", sdp="v=0\r\n", id=1),
    reconnect=False,
)


def b64url(data: bytes, padded: bool) -> str:
    """What livekit-client writes: standard base64 with + and / replaced, padding kept."""
    text = base64.b64encode(data).decode().replace("+", "-").replace("/", "_")
    return text if padded else text.rstrip("=")


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("padded", [True, False])
def test_join_request_round_trip(compress: bool, padded: bool) -> None:
    wrapped = rtc.WrappedJoinRequest(
        join_request=gzip.compress(JOIN.SerializeToString()) if compress else JOIN.SerializeToString(),
        compression=rtc.WrappedJoinRequest.GZIP if compress else rtc.WrappedJoinRequest.NONE,
    )
    assert decode_join_request(b64url(wrapped.SerializeToString(), padded)) == JOIN
    assert decode_join_request(encode_join_request(JOIN, compress)) == JOIN


def _wrapped(data: bytes, compression: int = rtc.WrappedJoinRequest.NONE) -> str:
    wrapped = rtc.WrappedJoinRequest(join_request=data, compression=compression)  # type: ignore[arg-type]
    return b64url(wrapped.SerializeToString(), True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "join_request is required"),
        ("%%%%", "cannot base64 decode"),
        ("!!not base64!!", "cannot base64 decode"),
        (b64url(b"\xff\xff\xff", True), "cannot unmarshal wrapped join request"),
        (_wrapped(b"\xff\xff\xff"), "cannot unmarshal join request"),
        (_wrapped(b"not gzip", rtc.WrappedJoinRequest.GZIP), "cannot read decompressed join request"),
        (
            _wrapped(gzip.compress(b"\x00" * (MAX_JOIN_REQUEST_BYTES + 10)), rtc.WrappedJoinRequest.GZIP),
            "join request too large",
        ),
        (_wrapped(b"\x00" * (MAX_JOIN_REQUEST_BYTES + 10)), "join request too large"),
    ],
)
def test_bad_join_requests_are_refused_precisely(value: str, message: str) -> None:
    with pytest.raises(JoinRequestError, match=message):
        decode_join_request(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"candidate":"candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}',
            CandidateInit("candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host", "0", 0),
        ),
        ('{"candidate":"","sdpMid":"0","sdpMLineIndex":0}', CandidateInit(None, "0", 0)),
        ('{"candidate":"candidate:x","sdpMid":null}', CandidateInit("candidate:x", None, None)),
    ],
)
def test_candidate_init(text: str, expected: CandidateInit) -> None:
    assert parse_candidate_init(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"candidate": 5}', "candidate must be a string"),
        ('{"candidate": "c", "sdpMid": 0}', "sdpMid must be a string"),
        ('{"candidate": "c", "sdpMLineIndex": "0"}', "sdpMLineIndex must be an integer"),
        ('{"candidate": "c", "sdpMLineIndex": true}', "sdpMLineIndex must be an integer"),
    ],
)
def test_bad_candidate_init(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_candidate_init(text)


ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\na=sctp-port:5000\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\na=mid:1\r\na=msid:PA_x:1 PA_x:2\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=inactive\r\na=mid:2\r\na=msid:s t\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
)


def test_rewrite_msids_touches_only_the_given_mids() -> None:
    out = rewrite_msids(ANSWER, {"1": ("PA_abc|TR_def", "TR_def")})
    assert "a=mid:1\r\na=msid:PA_abc|TR_def TR_def\r\n" in out
    assert "a=msid:PA_x:1 PA_x:2" not in out
    assert "a=mid:2\r\na=msid:s t\r\n" in out
    assert out.replace("a=msid:PA_abc|TR_def TR_def", "a=msid:PA_x:1 PA_x:2") == ANSWER
    assert rewrite_msids(ANSWER, {}) == ANSWER


def test_rewrite_msids_adds_a_missing_msid() -> None:
    out = rewrite_msids(ANSWER.replace("a=msid:s t\r\n", ""), {"2": ("PA_a|TR_b", "TR_b")})
    assert "a=mid:2\r\na=msid:PA_a|TR_b TR_b\r\n" in out


def test_section_codecs() -> None:
    assert section_codecs(ANSWER) == {"1": "audio/opus", "2": "video/VP8"}


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:stream-1 cid-video\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:4\r\na=msid:- cid-audio\r\n"  # sendrecv by default
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:5\r\na=inactive\r\na=msid:- cid-old\r\n"
)


def test_sending_mids_maps_the_clients_track_ids_to_its_mids() -> None:
    assert sending_mids(OFFER) == {"cid-video": "3", "cid-audio": "4"}
