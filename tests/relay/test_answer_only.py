"""A participant that always offers (LiveKit v1 style, mode "sfu_answer_only") with real peers:
the relay sends on the m-lines it offered to receive on, and asks for re-offers instead of offering."""

from __future__ import annotations

import asyncio

import pytest

from visio_matrix.relay import Negotiated, NegotiationNeeded, Relay
from visio_matrix.relay.errors import NegotiationError
from visio_matrix.relay.sdp_sections import SdpText, section_direction, section_mid

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


class GatedPeer(Peer):
    """Answers relay offers only once its own first offer is answered (the pump may be faster)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.ready = asyncio.Event()

    async def answer(self, offer_sdp: str) -> str:
        await self.ready.wait()
        return await super().answer(offer_sdp)


def requests_for(signaling: Signaling, pid: str) -> list[NegotiationNeeded]:
    return [e for e in signaling.events if isinstance(e, NegotiationNeeded) and e.participant_id == pid]


async def reoffer(peer: Peer, signaling: Signaling, event: NegotiationNeeded) -> str:
    """What a LiveKit client does on media_sections_requirement: add what is missing, re-offer."""
    for stream in event.streams:
        if stream.mid is None:
            peer.pc.addTransceiver(stream.kind, direction="recvonly")
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    negotiated = await signaling.conference.apply_offer(peer.name, peer.pc.localDescription.sdp)
    await peer.accept(negotiated.sdp)
    return negotiated.sdp


async def test_answer_only_participant_receives_on_its_offered_sections(relay: Relay) -> None:
    conference = await relay.create_conference("answer-only")
    signaling = Signaling(relay, conference)  # answers relay offers for frank only
    erin = Peer("erin", RED, 440)
    try:
        # Erin joins without an offer (a LiveKit client that does not send it with its join request),
        # then publishes audio + video and offers one audio and one video m-line to receive on.
        assert await conference.add_participant("erin", mode="sfu_answer_only") == Negotiated("", ())
        with pytest.raises(NegotiationError, match="no relay offer pending"):
            await conference.accept_answer("erin", "v=0")
        erin.add_tracks()
        erin.pc.addTransceiver("audio", direction="recvonly")
        erin.pc.addTransceiver("video", direction="recvonly")
        await erin.pc.setLocalDescription(await erin.pc.createOffer())
        negotiated = await conference.apply_offer("erin", erin.pc.localDescription.sdp)
        await erin.accept(negotiated.sdp)

        # Frank publishes three tracks: one more video than erin has m-lines for.
        frank = GatedPeer("frank", GREEN, 1000)
        frank.add_tracks()
        frank.pc.addTrack(ColorVideoTrack(BLUE))
        signaling.peers["frank"] = frank
        await frank.pc.setLocalDescription(await frank.pc.createOffer())
        await frank.accept(
            (await conference.add_participant("frank", offer_sdp=frank.pc.localDescription.sdp)).sdp
        )
        frank.ready.set()
        await signaling.wait_for(lambda: bool(requests_for(signaling, "erin")), 10, "a request for erin")
        request = requests_for(signaling, "erin")[0]
        assert request.offer_sdp == ""
        free = {"audio": "2", "video": "3"}  # erin's recvonly m-lines (mids 0, 1 are her own tracks)
        assert sorted((s.kind, s.mid or "") for s in request.streams) == [
            ("audio", free["audio"]),
            ("video", ""),  # erin must add an m-line for it
            ("video", free["video"]),
        ]
        assert {s.publisher_id for s in request.streams} == {"frank"}
        # Nothing placed before erin re-offers; the same request is not repeated meanwhile.
        assert conference.streams_for("erin") == ()

        answer = await reoffer(erin, signaling, request)
        placed = conference.streams_for("erin")
        assert sorted((s.kind, s.mid) for s in placed) == [("audio", "2"), ("video", "3"), ("video", "4")]
        sections = {section_mid(s): s for s in SdpText.parse(answer).sections}
        for stream in placed:
            section = sections[stream.mid]
            assert section_direction(section) == "sendonly"
            assert f"a=msid:{stream.stream_id} {stream.track_id}" in section
        await signaling.wait_for(
            lambda: (
                sum(looks(r, GREEN) or looks(r, BLUE) for r in erin.received.values()) == 2
                and any(len(r.audio) >= 10 for r in erin.received.values() if r.kind == "audio")
                and any(looks(r, RED) for r in frank.received.values())
            ),
            30,
            "erin receiving frank's two videos and audio, frank erin's video",
        )
        assert len(requests_for(signaling, "erin")) == 1

        # Frank leaves: erin is asked to re-offer, and her answer stops those m-lines for good.
        await conference.remove_participant("frank")
        await signaling.wait_for(lambda: len(requests_for(signaling, "erin")) == 2, 10, "a second request")
        assert requests_for(signaling, "erin")[1].streams == ()
        answer = await reoffer(erin, signaling, requests_for(signaling, "erin")[1])
        sections = {section_mid(s): s for s in SdpText.parse(answer).sections}
        assert [section_direction(sections[mid]) for mid in ("2", "3", "4")] == ["inactive"] * 3
        assert conference.streams_for("erin") == ()
    finally:
        await signaling.close()
        await erin.close()
