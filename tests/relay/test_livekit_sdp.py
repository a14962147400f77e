"""The relay's SDP munging for browser (livekit-client) offers, as pure functions: simulcast accepted
as one layer, one section rejected without refusing the offer (real peers: test_section_reject.py)."""

from __future__ import annotations

import pytest

from visio_matrix.relay.errors import UnsupportedCodecError
from visio_matrix.relay.sdp_check import check_remote_sdp
from visio_matrix.relay.sdp_sections import (
    SdpText,
    section_direction,
    section_mid,
    section_port,
    write_rejected,
)
from visio_matrix.relay.simulcast import REPAIRED_RID_URI, RID_URI, answer_simulcast, choose_rid

TRANSPORT = (
    "a=ice-ufrag:Ab12\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
)


def media(kind: str, mid: str, direction: str, codecs: str, extra: str = "", port: int = 9) -> str:
    rtpmaps = {
        "111": "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n",
        "96": "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n",
        "97": "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n",
        "98": "a=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n",
        "99": "a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n",
        "45": "a=rtpmap:45 AV1/90000\r\n",
        "102": "a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;"
        "profile-level-id=42e01f\r\n",
    }
    return (
        f"m={kind} {port} UDP/TLS/RTP/SAVPF {codecs}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
        + TRANSPORT
        + f"a=mid:{mid}\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n{extra}a={direction}\r\n"
        + "a=rtcp-mux\r\na=rtcp-rsize\r\n"
        + "".join(rtpmaps[c] for c in codecs.split())
    )


SIMULCAST = (
    f"a=extmap:10 {RID_URI}\r\na=extmap:11 {REPAIRED_RID_URI}\r\na=msid:stream-1 cid-camera\r\n"
    "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n"
)


def chrome_offer(camera_codecs: str = "96 97 98 99 102", extra_sections: str = "") -> str:
    """What livekit-client 2.23 in Chromium offers after publishing a simulcast camera and a mic."""
    return (
        "v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3 4\r\n"
        "a=extmap-allow-mixed\r\na=msid-semantic: WMS stream-1\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
        + TRANSPORT
        + "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
        + media("audio", "1", "recvonly", "111")
        + media("video", "2", "recvonly", "96 97 98 99 45 102")
        + media("video", "3", "sendonly", camera_codecs, SIMULCAST)
        + media("audio", "4", "sendonly", "111", "a=msid:stream-1 cid-mic\r\n")
        + extra_sections
    )


def check(sdp: str, sdp_type: str = "offer"):  # type: ignore[no-untyped-def]
    return check_remote_sdp(sdp, sdp_type, max_bytes=64 * 1024, max_sections=64)


def test_browser_offer_is_filtered_and_its_simulcast_noted() -> None:
    checked = check(chrome_offer())
    assert checked.rejected == ()
    text = SdpText.parse(checked.sdp)
    assert [section_mid(s) for s in text.sections] == ["0", "1", "2", "3", "4"]
    camera = text.sections[3]
    assert camera[0] == "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102"  # VP9 and its RTX removed
    assert "a=rid:f send" in camera and f"a=extmap:10 {RID_URI}" in camera  # left for aiortc
    [simulcast] = checked.simulcast
    assert (simulcast.mid, simulcast.rids, simulcast.chosen) == ("3", ("q", "h", "f"), "f")
    assert simulcast.extensions == ((10, RID_URI), (11, REPAIRED_RID_URI))
    # The RID extensions are negotiated on every video section offering them (only the camera's here).
    assert checked.rid_extensions == (("3", ((10, RID_URI), (11, REPAIRED_RID_URI))),)
    receive_too = check(chrome_offer().replace("a=mid:2\r\n", f"a=mid:2\r\na=extmap:10 {RID_URI}\r\n"))
    assert [mid for mid, _ in receive_too.rid_extensions] == ["2", "3"]
    assert [s.mid for s in receive_too.simulcast] == ["3"]


@pytest.mark.parametrize(
    ("rids", "chosen"),
    [
        (("q", "h", "f"), "f"),
        (("q", "h"), "h"),
        (("f", "q"), "f"),
        (("hi", "mid", "lo"), "hi"),  # not livekit-client's names: the first listed
        (("1",), "1"),
    ],
)
def test_choose_rid(rids: tuple[str, ...], chosen: str) -> None:
    assert choose_rid(rids) == chosen


def test_paused_layers_and_sections_without_rid_extension() -> None:
    paused = check(chrome_offer().replace("a=simulcast:send q;h;f", "a=simulcast:send q;h;~f"))
    assert paused.simulcast[0].rids == ("q", "h") and paused.simulcast[0].chosen == "h"
    no_extension = check(chrome_offer().replace(f"a=extmap:10 {RID_URI}\r\n", ""))
    assert no_extension.simulcast == ()  # cannot tell layers apart: simulcast declined (no lines)


def aiortc_answer(mids_directions: list[tuple[str, str, str]]) -> str:
    out = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE "
        + " ".join(m for m, _, _ in mids_directions)
        + "\r\n"
    )
    for mid, kind, direction in mids_directions:
        if kind == "application":
            out += f"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:{mid}\r\n" + TRANSPORT
            continue
        out += (
            f"m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na={direction}\r\n"
            f"a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=mid:{mid}\r\na=rtcp-mux\r\n"
            "a=rtpmap:96 VP8/90000\r\n" + TRANSPORT
        )
    return out


def test_answer_accepts_exactly_one_layer_on_the_simulcast_section() -> None:
    offers = check(chrome_offer()).simulcast
    answer = aiortc_answer(
        [
            ("0", "application", ""),
            ("1", "audio", "inactive"),
            ("2", "video", "sendonly"),
            ("3", "video", "recvonly"),
            ("4", "audio", "recvonly"),
        ]
    )
    out = SdpText.parse(answer_simulcast(answer, offers))
    camera = out.sections[3]
    assert camera.count("a=rid:f recv") == 1 and "a=simulcast:recv f" in camera
    extmaps = [line for line in camera if line.startswith("a=extmap:")]
    assert extmaps == [
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:10 {RID_URI}",
        f"a=extmap:11 {REPAIRED_RID_URI}",
    ]
    for other in (0, 1, 2, 4):
        assert not any(line.startswith(("a=rid:", "a=simulcast:")) for line in out.sections[other])
    # Idempotent on extmaps aiortc already wrote (the relay negotiates them on the m-line).
    again = SdpText.parse(answer_simulcast(str(out), offers)).sections[3]
    assert again.count(f"a=extmap:10 {RID_URI}") == 1 and again.count("a=rid:f recv") == 1


def test_a_vp9_av1_only_section_is_rejected_alone() -> None:
    extra = media("video", "5", "sendonly", "98 99 45", "a=msid:stream-1 cid-screen\r\n")
    offer = chrome_offer(extra_sections=extra).replace("BUNDLE 0 1 2 3 4", "BUNDLE 0 1 2 3 4 5")
    checked = check(offer)
    [rejected] = checked.rejected
    assert (rejected.index, rejected.mid, rejected.kind) == (5, "5", "video")
    assert rejected.m_line == "m=video 0 UDP/TLS/RTP/SAVPF 98" and "no forwardable codec" in rejected.reason
    stand_in = SdpText.parse(checked.sdp).sections[5]
    assert stand_in[0] == "m=video 9 UDP/TLS/RTP/SAVPF 98"
    assert section_direction(stand_in) == "inactive" and "a=rtpmap:98 VP8/90000" in stand_in
    assert not any(line.startswith(("a=msid:", "a=rid:", "a=ssrc", "a=fmtp:")) for line in stand_in)
    assert any(line.startswith("a=ice-ufrag:") for line in stand_in)

    answer = aiortc_answer([(str(i), "video", "inactive") for i in range(6)])
    written = SdpText.parse(write_rejected(answer, {r.mid: r for r in checked.rejected}))
    section = written.sections[5]
    assert section[0] == "m=video 0 UDP/TLS/RTP/SAVPF 98" and "a=mid:5" in section and "a=inactive" in section
    assert [section_port(s) for s in written.sections[:5]] == ["9"] * 5
    assert "a=group:BUNDLE 0 1 2 3 4" in written.session


def test_stopped_sections_are_rejected_and_a_hopeless_offer_refused() -> None:
    stopped = media("video", "5", "inactive", "96", port=0)
    offer = chrome_offer(extra_sections=stopped)
    checked = check(offer)
    assert [(r.mid, r.m_line) for r in checked.rejected] == [("5", "m=video 0 UDP/TLS/RTP/SAVPF 96")]
    assert "stopped by the peer" in checked.rejected[0].reason
    hopeless = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        + media("video", "0", "sendonly", "98 99")
        + media("audio", "1", "sendonly", "111").replace("opus/48000/2", "G729/8000")
    )
    with pytest.raises(UnsupportedCodecError) as info:
        check(hopeless)
    assert "mid '0', video" in str(info.value) and "mid '1', audio" in str(info.value)


def test_answers_stopping_a_section_make_it_inactive_for_aiortc() -> None:
    answer = aiortc_answer([("0", "audio", "sendrecv"), ("1", "video", "recvonly")])
    stopped = answer.replace("m=video 9 ", "m=video 0 ")
    checked = check(stopped, "answer")
    assert checked.rejected == ()  # nothing to write back: the peer rejected the relay's m-line
    assert section_direction(SdpText.parse(checked.sdp).sections[1]) == "inactive"
