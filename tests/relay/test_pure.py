"""Table tests of the relay's pure parts: rewriting, history, keyframes and throttling, SDP checks."""

from __future__ import annotations

import re

import pytest

from visio_matrix.relay import RelayOptions
from visio_matrix.relay.errors import InvalidSdpError, UnsupportedCodecError
from visio_matrix.relay.history import RtpHistory
from visio_matrix.relay.keyframe import KeyframeThrottle, h264_is_keyframe_start, vp8_is_keyframe_start
from visio_matrix.relay.rewrite import SequenceRewriter, TimestampRewriter, seq_newer
from visio_matrix.relay.sdp_check import check_remote_sdp


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [(1, 0, True), (0, 1, False), (0, 65535, True), (65535, 0, False), (5, 5, False), (0x8000, 0, False)],
)
def test_seq_newer(a: int, b: int, newer: bool) -> None:
    assert seq_newer(a, b) is newer


# (operation, input seq, expected output seq or None); "drop" rows have no output.
SEQ_CASES = [
    (
        "in-order from a random start",
        1000,
        [("send", 5000, 1000), ("send", 5001, 1001), ("send", 5002, 1002)],
    ),
    ("wraps at 65535", 65534, [("send", 10, 65534), ("send", 11, 65535), ("send", 12, 0), ("send", 13, 1)]),
    (
        "a drop leaves no gap",
        100,
        [("send", 1, 100), ("drop", 2, None), ("drop", 3, None), ("send", 4, 101), ("send", 5, 102)],
    ),
    ("drops before the first send are free", 7, [("drop", 50, None), ("drop", 51, None), ("send", 52, 7)]),
    (
        "a late packet older than a drop point is refused",
        0,
        [("send", 10, 0), ("send", 12, 2), ("drop", 13, None), ("send", 11, None), ("send", 14, 3)],
    ),
    (
        "a late packet with no drop in between keeps its slot",
        0,
        [("send", 10, 0), ("send", 12, 2), ("send", 11, 1)],
    ),
]


@pytest.mark.parametrize(("name", "start", "steps"), SEQ_CASES, ids=[c[0] for c in SEQ_CASES])
def test_sequence_rewriter(name: str, start: int, steps: list[tuple[str, int, int | None]]) -> None:
    rewriter = SequenceRewriter(start)
    for op, seq, expected in steps:
        if op == "drop":
            rewriter.drop(seq)
        else:
            assert rewriter.rewrite(seq) == expected, f"{name}: seq {seq}"


@pytest.mark.parametrize(
    ("start", "inputs", "outputs"),
    [
        (1000, [90000, 93000, 96000], [1000, 4000, 7000]),
        (0xFFFFFF00, [0, 0x200], [0xFFFFFF00, 0x100]),  # output wraps
        (5, [0xFFFFFFFF, 0], [5, 6]),  # input wraps
    ],
)
def test_timestamp_rewriter(start: int, inputs: list[int], outputs: list[int]) -> None:
    rewriter = TimestampRewriter(start)
    assert [rewriter.rewrite(ts) for ts in inputs] == outputs


def test_history_keeps_the_last_packet_of_each_slot() -> None:
    history: RtpHistory[str] = RtpHistory(4)
    for seq in range(10):
        history.put(seq, f"p{seq}")
    assert [history.get(seq) for seq in range(10)] == [None] * 6 + ["p6", "p7", "p8", "p9"]
    history.put(65535, "last")
    assert history.get(65535) == "last"  # same slot as 7 (65535 % 4 == 3): 7 is gone
    assert history.get(7) is None and history.get(8) == "p8"
    with pytest.raises(ValueError, match="positive"):
        RtpHistory(0)


VP8_KEY = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])  # S=1 PID=0, P=0
VP8_DELTA = bytes([0x10, 0x01, 0x00])  # S=1, P=1
VP8_CONTINUATION = bytes([0x00, 0x00, 0x00])  # S=0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (VP8_KEY, True),
        (VP8_DELTA, False),
        (bytes([0x90, 0xC0, 0x81, 0x23, 0x05, 0x00]), True),  # X, I with 15-bit id, L, keyframe
        (bytes([0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x00]), True),  # X, I, L, T
        (bytes([0x90, 0x80, 0x05, 0x01]), False),  # X, I 7-bit id, delta
        (VP8_CONTINUATION, False),
        (bytes([0x11, 0x00]), False),  # partition 1
        (b"", False),
        (bytes([0x90]), False),  # truncated
    ],
)
def test_vp8_keyframe(payload: bytes, expected: bool) -> None:
    assert vp8_is_keyframe_start(payload) is expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x65, 0x88]), True),  # IDR
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x41, 0x9A]), False),  # non-IDR slice
        (bytes([0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE]), True),  # STAP-A with SPS
        (bytes([0x18, 0x00, 0x02, 0x09, 0x10]), False),  # STAP-A with AUD only
        (bytes([0x7C, 0x85, 0x00]), True),  # FU-A start of IDR
        (bytes([0x7C, 0x05, 0x00]), False),  # FU-A continuation
        (b"", False),
    ],
)
def test_h264_keyframe(payload: bytes, expected: bool) -> None:
    assert h264_is_keyframe_start(payload) is expected


# (time, action) -> expected decision; "fire" rows: expected bool from fire(); "key" = keyframe seen.
THROTTLE_CASES = [
    ("first request goes out", [(0.0, "req", "send")]),
    ("second inside the window is deferred", [(0.0, "req", "send"), (0.1, "req", "defer@0.5")]),
    ("third coalesces", [(0.0, "req", "send"), (0.1, "req", "defer@0.5"), (0.2, "req", "coalesced")]),
    (
        "deferred fires",
        [(0.0, "req", "send"), (0.1, "req", "defer@0.5"), (0.5, "fire", True), (0.6, "req", "defer@1")],
    ),
    (
        "keyframe satisfies deferral",
        [(0.0, "req", "send"), (0.1, "req", "defer@0.5"), (0.2, "key", None), (0.5, "fire", False)],
    ),
    ("after the window, send", [(0.0, "req", "send"), (0.5, "req", "send"), (1.2, "req", "send")]),
]


@pytest.mark.parametrize(("name", "steps"), THROTTLE_CASES, ids=[c[0] for c in THROTTLE_CASES])
def test_keyframe_throttle(name: str, steps: list[tuple[float, str, object]]) -> None:
    throttle = KeyframeThrottle(0.5)
    for now, action, expected in steps:
        if action == "req":
            decision = throttle.request(now)
            got = decision.action if decision.retry_at is None else f"{decision.action}@{decision.retry_at:g}"
            assert got == expected, f"{name} at {now}"
        elif action == "fire":
            assert throttle.fire(now) is expected, f"{name} at {now}"
        else:
            throttle.keyframe_seen()


def _offer(audio_codecs: str = "111", video_codecs: str = "96 97", fingerprint: bool = True) -> str:
    fp = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n" if fingerprint else ""
    return (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
        f"m=audio 9 UDP/TLS/RTP/SAVPF {audio_codecs}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
        "a=rtcp-mux\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n" + fp + "a=setup:actpass\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:18 G729/8000\r\n"
        f"m=video 9 UDP/TLS/RTP/SAVPF {video_codecs}\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendrecv\r\n"
        "a=rtcp-mux\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n" + fp + "a=setup:actpass\r\n"
        "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
        "a=rtpmap:98 VP9/90000\r\na=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n"
    )


def check(sdp: str, sdp_type: str = "offer") -> str:
    return check_remote_sdp(sdp, sdp_type, max_bytes=4096, max_sections=4).sdp


def test_offer_is_filtered_to_forwardable_codecs() -> None:
    out = check(_offer(audio_codecs="0 111 18", video_codecs="98 99 96 97"))
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in out
    assert "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n" in out
    assert "PCMU" not in out and "VP9" not in out and "apt=98" not in out and "G729" not in out
    assert "a=rtcp-fb:96 nack" in out and "a=fmtp:97 apt=96" in out


def test_good_offer_passes_unchanged() -> None:
    sdp = _offer()
    assert check(sdp) == sdp


@pytest.mark.parametrize(
    ("sdp", "error", "message"),
    [
        ("garbage", InvalidSdpError, "does not start with 'v=0'"),
        ("v=0\r\n" + "a=x\r\n" * 2000, InvalidSdpError, "more than the 4096 allowed"),
        ("v=0\r\n" + "m=audio 9 RTP/AVP 0\r\n" * 5, InvalidSdpError, "more than 4 media sections"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", InvalidSdpError, "no media section"),
        (
            _offer(fingerprint=False),
            InvalidSdpError,
            "media section 0 (mid '0', audio): DTLS fingerprint is missing",
        ),
        (_offer().replace("a=ice-pwd", "a=x-pwd"), InvalidSdpError, "ICE ufrag or password is missing"),
        (_offer().replace("a=rtcp-mux\r\n", ""), InvalidSdpError, "rtcp-mux is required"),
        (_offer().replace("sha-256", "md5"), InvalidSdpError, "unknown DTLS fingerprint algorithm 'md5'"),
        (
            _offer(audio_codecs="0 18", video_codecs="98 99"),
            UnsupportedCodecError,
            "no forwardable codec offered (audio/G729, audio/PCMU)",
        ),
        (
            _offer(audio_codecs="0 18", video_codecs="98 99"),
            UnsupportedCodecError,
            "media section 1 (mid '1', video): no forwardable codec offered (video/VP9, video/rtx)",
        ),
        ("v=0\r\nm=audio x\r\n", InvalidSdpError, "could not be parsed"),
    ],
)
def test_bad_sdp_is_refused_with_a_precise_error(sdp: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        check(sdp)
    assert message in str(info.value)


def test_answers_are_not_filtered() -> None:
    sdp = _offer(audio_codecs="0 111")
    assert check(sdp, "answer") == sdp


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"host_addresses": ()}, "host_addresses must name at least one address"),
        ({"udp_port_min": 5000, "udp_port_max": 4000}, "UDP port range 5000-4000 is invalid"),
        ({"udp_port_max": 70000}, "UDP port range 40000-70000 is invalid"),
        ({"connect_timeout": 0}, "connect_timeout must be positive"),
        ({"subscriber_queue_size": 0}, "subscriber_queue_size must be at least 1"),
    ],
)
def test_relay_options_are_validated(overrides: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"host_addresses": ("127.0.0.1",), "udp_port_min": 40000, "udp_port_max": 40999}
    base.update(overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        RelayOptions(**base)  # type: ignore[arg-type]
