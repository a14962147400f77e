"""Three real aiortc peers through the relay: each gets the other two's colour and tone."""

from __future__ import annotations

import pytest
from aiortc import sdp as aiortc_sdp

from visio_matrix.relay import ActiveSpeakerChanged, Relay

from .peers import Peer, Signaling

pytestmark = pytest.mark.media

COLORS = {"alice": (230, 20, 20), "bob": (20, 230, 20), "carol": (20, 20, 230)}
TONES = {"alice": 440.0, "bob": 1000.0, "carol": 2500.0}


def publisher_of(signaling: Signaling, subscriber: str) -> dict[str, tuple[str, str]]:
    return {s.track_id: (s.publisher_id, s.kind) for s in signaling.conference.streams_for(subscriber)}


async def test_three_participants_receive_each_others_colour_and_tone(relay: Relay) -> None:
    conference = await relay.create_conference("room")
    signaling = Signaling(relay, conference)
    try:
        for name in COLORS:
            await signaling.join(Peer(name, COLORS[name], TONES[name]))

        def all_flowing() -> bool:
            for peer in signaling.peers.values():
                got = [
                    r
                    for r in peer.received.values()
                    if r.frames >= 20
                    and ((r.kind == "video" and r.last_rgb) or (r.kind == "audio" and len(r.audio) >= 50))
                ]
                if len(got) < 4:
                    return False
            return True

        await signaling.wait_for(all_flowing, 30, "every peer decoding 2 audio + 2 video streams")
        for name, peer in signaling.peers.items():
            owners = publisher_of(signaling, name)
            seen = set()
            for track_id, record in peer.received.items():
                if record.frames < 20:
                    continue
                publisher, kind = owners[track_id]
                assert publisher != name
                seen.add((publisher, kind))
                if kind == "video":
                    assert record.last_rgb is not None
                    expected = COLORS[publisher]
                    assert all(abs(a - b) < 40 for a, b in zip(record.last_rgb, expected, strict=True)), (
                        f"{name} got colour {record.last_rgb} on {publisher}'s stream, expected {expected}"
                    )
                else:
                    freq = record.dominant_frequency()
                    assert abs(freq - TONES[publisher]) < 30, f"{name} heard {freq} Hz from {publisher}"
            others = {p for p in COLORS if p != name}
            assert seen == {(p, k) for p in others for k in ("audio", "video")}
        stats = conference.stats()
        assert stats.packets_out > 0 and stats.packets_in > 0
        # RTT needs a sender report and the receiver report answering it (0.5-1.5 s apart each).
        await signaling.wait_for(
            lambda: all(p.rtt_s is not None for p in conference.stats().participants), 10, "RTT estimates"
        )
        assert all(p.rtt_s is not None and 0 < p.rtt_s < 1 for p in conference.stats().participants)
        # Everybody sends a loud tone with the RFC 6464 level extension: someone is the speaker.
        speakers = [e.participant_id for e in signaling.events if isinstance(e, ActiveSpeakerChanged)]
        assert speakers and speakers[0] in COLORS
    finally:
        await signaling.close()


async def test_h264_is_forwarded_without_transcoding(relay: Relay) -> None:
    conference = await relay.create_conference("h264")
    signaling = Signaling(relay, conference)
    try:
        await signaling.join(Peer("alice", COLORS["alice"], TONES["alice"], video_codec="video/H264"))
        await signaling.join(Peer("bob", COLORS["bob"], TONES["bob"]))
        published = {t.participant_id: t.codec for t in conference.published_tracks() if t.kind == "video"}
        assert published == {"alice": "video/H264", "bob": "video/VP8"}
        owners = publisher_of(signaling, "bob")

        def bob_sees_alice() -> bool:
            return any(
                owners.get(tid, ("", ""))[0] == "alice"
                and r.kind == "video"
                and r.frames >= 10
                and r.last_rgb
                for tid, r in signaling.peers["bob"].received.items()
            )

        await signaling.wait_for(bob_sees_alice, 30, "bob decoding alice's H264 video")
        record = next(
            r
            for tid, r in signaling.peers["bob"].received.items()
            if owners.get(tid, ("", ""))[0] == "alice" and r.kind == "video"
        )
        assert record.last_rgb is not None
        assert all(abs(a - b) < 40 for a, b in zip(record.last_rgb, COLORS["alice"], strict=True))
        # The m-line carrying alice's video to bob offers H264 only: no transcoding path exists.
        mid = next(
            s.mid for s in conference.streams_for("bob") if s.publisher_id == "alice" and s.kind == "video"
        )
        sections = aiortc_sdp.SessionDescription.parse(signaling.peers["bob"].pc.remoteDescription.sdp).media
        section = next(m for m in sections if m.rtp.muxId == mid)
        assert {c.mimeType for c in section.rtp.codecs} == {"video/H264", "video/rtx"}
    finally:
        await signaling.close()
