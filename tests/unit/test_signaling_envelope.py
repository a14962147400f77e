"""Compressed conference messages (signaling.envelope): round trip, thresholds, hostile envelopes."""

from __future__ import annotations

import base64
import json
import zlib

from visio_matrix.signaling.envelope import DEFLATED_KEY, content_size, deflate, inflate
from visio_matrix.signaling.messages import SignalingError


def big_offer(m_lines: int) -> dict[str, object]:
    sdp = "v=0\r\n" + "".join(
        f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\na=msid:PA_x|TR_{i} TR_{i}\r\na=rtpmap:96 VP8/90000\r\n"
        "a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 goog-remb\r\na=sendonly\r\n"
        for i in range(m_lines)
    )
    return {"call_id": "c", "description": {"type": "offer", "sdp": sdp}}


def test_small_content_is_left_alone() -> None:
    content = {"call_id": "c", "reason": "user_hangup"}
    assert deflate(content) is content
    assert inflate(content) is content


def test_large_offer_round_trips_and_shrinks() -> None:
    content = big_offer(120)  # ~25 KB: the relay's offer in a call of ~25 people is ~45 KB
    packed = deflate(content)
    assert set(packed) == {DEFLATED_KEY}
    assert content_size(packed) * 5 < content_size(content)
    assert inflate(packed) == content


def test_hostile_envelopes_are_clear_errors() -> None:
    bomb = base64.b64encode(zlib.compress(b"[" + b" " * 5_000_000 + b"]")).decode()
    cases = {
        "not base64": {DEFLATED_KEY: "%%%"},
        "not zlib": {DEFLATED_KEY: base64.b64encode(b"plain").decode()},
        "not json": {DEFLATED_KEY: base64.b64encode(zlib.compress(b"{nope")).decode()},
        "not an object": {DEFLATED_KEY: base64.b64encode(zlib.compress(b"[1]")).decode()},
        "nested": {
            DEFLATED_KEY: base64.b64encode(zlib.compress(json.dumps({DEFLATED_KEY: "x"}).encode())).decode()
        },
        "extra keys": {DEFLATED_KEY: "eJwDAAAAAAE=", "call_id": "c"},
        "wrong type": {DEFLATED_KEY: 5},
        "bomb": {DEFLATED_KEY: bomb},
    }
    for name, content in cases.items():
        result = inflate(content)
        assert isinstance(result, SignalingError), name
        assert DEFLATED_KEY in result.message, name
    assert inflate({DEFLATED_KEY: bomb}).code == "too_large"  # type: ignore[union-attr]
