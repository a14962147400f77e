"""One bad media section is rejected alone; simulcast sections are accepted as one layer (real peers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from visio_matrix.relay import Relay
from visio_matrix.relay.sdp_sections import SdpText, section_mid, section_port
from visio_matrix.relay.simulcast import REPAIRED_RID_URI, RID_URI

from .peers import ColorVideoTrack, Peer, Received, Signaling

pytestmark = pytest.mark.media

RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def looks(record: Received | None, rgb: tuple[int, int, int]) -> bool:
    return (
        record is not None
        and record.frames >= 5
        and record.last_rgb is not None
        and all(abs(a - b) < 40 for a, b in zip(record.last_rgb, rgb, strict=True))
    )


def received_from(signaling: Signaling, subscriber: str, publisher: str, kind: str) -> list[Received]:
    owners = {
        s.track_id
        for s in signaling.conference.streams_for(subscriber)
        if s.publisher_id == publisher and s.kind == kind
    }
    return [r for track_id, r in signaling.peers[subscriber].received.items() if track_id in owners]


def edit_section(sdp: str, index: int, edit: Callable[[list[str]], list[str]]) -> str:
    text = SdpText.parse(sdp)
    sections = [list(s) for s in text.sections]
    sections[index] = edit(sections[index])
    return str(text.replace(sections))


class RejectionTolerantPeer(Peer):
    """aiortc (unlike a browser) cannot take a rejected section: it is spelled to it as an inactive
    section with the bundle's candidates (aiortc takes a shared transport's candidates from its last
    section)."""

    @staticmethod
    def for_aiortc(sdp: str) -> str:
        text = SdpText.parse(sdp)
        candidates = [line for line in text.sections[0] if line.startswith("a=candidate:")]
        sections = []
        for section in text.sections:
            if section_port(section) == "0":
                pt = section[0].split(" ")[3]
                codec = "opus/48000/2" if section[0].startswith("m=audio") else "VP8/90000"
                extra = ["a=rtcp-mux", f"a=rtpmap:{pt} {codec}", *candidates]
                section = (section[0].replace(" 0 ", " 9 ", 1), *section[1:], *extra)
            sections.append(section)
        return str(text.replace(sections))

    async def answer(self, offer_sdp: str) -> str:
        return await super().answer(self.for_aiortc(offer_sdp))

    async def accept(self, answer_sdp: str) -> None:
        await super().accept(self.for_aiortc(answer_sdp))


async def test_a_vp9_only_section_is_rejected_and_the_rest_of_the_call_works(relay: Relay) -> None:
    conference = await relay.create_conference("reject")
    signaling = Signaling(relay, conference)
    alice = RejectionTolerantPeer("alice", RED, 440)
    try:
        # Alice offers audio, VP8 video, and a third section that (as with Element Call's VP9 setting)
        # offers VP9 only: before, the relay refused the whole offer.
        alice.add_tracks()
        alice.pc.addTrack(ColorVideoTrack(BLUE))
        await alice.pc.setLocalDescription(await alice.pc.createOffer())
        offer = alice.pc.localDescription.sdp

        def vp9_only(section: list[str]) -> list[str]:
            return [
                line.replace("VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000") for line in section
            ]

        offer = edit_section(offer, 2, vp9_only)
        negotiated = await conference.add_participant("alice", offer_sdp=offer)
        answer = SdpText.parse(negotiated.sdp)
        ports = [section_port(s) for s in answer.sections]
        assert ports[2] == "0" and ports[0] != "0" and ports[1] != "0", ports
        rejected = answer.sections[2]
        assert section_mid(rejected) == "2" and "a=inactive" in rejected
        bundle = next(line for line in answer.session if line.startswith("a=group:BUNDLE"))
        assert bundle.split(" ")[1:] == ["0", "1"]
        assert {t.kind for t in conference.published_tracks()} == {"audio", "video"}
        assert len(conference.published_tracks()) == 2

        await alice.accept(negotiated.sdp)
        signaling.peers["alice"] = alice
        await signaling.join(Peer("bob", GREEN, 1000))
        await signaling.wait_for(
            lambda: (
                any(looks(r, RED) for r in received_from(signaling, "bob", "alice", "video"))
                and any(looks(r, GREEN) for r in received_from(signaling, "alice", "bob", "video"))
            ),
            30,
            "alice and bob seeing each other's colour",
        )
        await signaling.wait_for(
            lambda: any(len(r.audio) >= 20 for r in received_from(signaling, "bob", "alice", "audio")),
            15,
            "bob hearing alice",
        )
        tone = received_from(signaling, "bob", "alice", "audio")[0].dominant_frequency()
        assert abs(tone - 440) < 30
        # Bob receives alice's audio and her one accepted video, nothing from the rejected section.
        assert sorted(s.kind for s in conference.streams_for("bob") if s.publisher_id == "alice") == [
            "audio",
            "video",
        ]
    finally:
        await signaling.close()


SIMULCAST_LINES = [
    f"a=extmap:10 {RID_URI}",
    f"a=extmap:11 {REPAIRED_RID_URI}",
    "a=rid:q send",
    "a=rid:h send",
    "a=rid:f send",
    "a=simulcast:send q;h;f",
]


async def test_simulcast_offer_gets_one_layer_and_unannounced_ssrcs_are_routed_by_mid(relay: Relay) -> None:
    conference = await relay.create_conference("simulcast")
    signaling = Signaling(relay, conference)
    carol = Peer("carol", RED, 440)
    try:
        # Like a browser's simulcast camera: RID lines, no SSRC lines. A second video section with the
        # same payload type and no SSRC either: aiortc's router alone would drop both streams.
        carol.add_tracks()
        carol.pc.addTrack(ColorVideoTrack(BLUE))
        await carol.pc.setLocalDescription(await carol.pc.createOffer())
        offer = carol.pc.localDescription.sdp

        def simulcast(section: list[str]) -> list[str]:
            kept = [line for line in section if not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
            return kept + SIMULCAST_LINES

        def no_ssrc(section: list[str]) -> list[str]:
            kept = [line for line in section if not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
            return kept + SIMULCAST_LINES[:2]  # offers the RID extensions, without simulcast

        offer = edit_section(edit_section(offer, 1, simulcast), 2, no_ssrc)
        negotiated = await conference.add_participant("carol", offer_sdp=offer)
        answer = SdpText.parse(negotiated.sdp)
        camera = answer.sections[1]
        assert "a=rid:f recv" in camera and "a=simulcast:recv f" in camera
        assert f"a=extmap:10 {RID_URI}" in camera and f"a=extmap:11 {REPAIRED_RID_URI}" in camera
        screen = answer.sections[2]
        assert not any(line.startswith(("a=rid:", "a=simulcast:")) for line in screen)
        # Negotiated there too: a browser may later send simulcast on that m-line.
        assert f"a=extmap:10 {RID_URI}" in screen and f"a=extmap:11 {REPAIRED_RID_URI}" in screen
        await carol.accept(negotiated.sdp)
        signaling.peers["carol"] = carol

        # Dave only receives: carol never gets a relay offer, whose answer would announce her SSRCs
        # (a LiveKit v1 client never answers).
        await signaling.join_relay_offers(Peer("dave", None, None))
        await signaling.wait_for(
            lambda: (
                any(looks(r, RED) for r in received_from(signaling, "dave", "carol", "video"))
                and any(looks(r, BLUE) for r in received_from(signaling, "dave", "carol", "video"))
            ),
            30,
            "dave seeing both of carol's videos",
        )
    finally:
        await signaling.close()
