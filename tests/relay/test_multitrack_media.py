"""One participant publishing several tracks (camera + screen share, or a relay link) with a data channel."""

from __future__ import annotations

import pytest
from aiortc import RTCSessionDescription

from visio_matrix.relay import Relay

from .peers import ColorVideoTrack, Peer, Signaling

pytestmark = pytest.mark.media

CAMERA, SCREEN = (230, 20, 20), (20, 20, 230)


async def test_each_published_track_keeps_its_origin_and_purpose(relay: Relay) -> None:
    conference = await relay.create_conference("multi")
    signaling = Signaling(relay, conference)
    try:
        alice = Peer("alice", CAMERA, 440)
        screen = ColorVideoTrack(SCREEN)
        alice.add_tracks()
        screen_sender = alice.pc.addTrack(screen)
        screen_sender._stream_id = "alice-screen-stream"  # a second msid stream, as a browser would make
        alice.pc.createDataChannel("chat")
        await alice.pc.setLocalDescription(await alice.pc.createOffer())
        camera_stream = alice.pc.getTransceivers()[0].sender._stream_id
        signaling.peers["alice"] = alice
        negotiated = await conference.add_participant(
            "alice",
            offer_sdp=alice.pc.localDescription.sdp,
            metadata={"user_id": "@alice:example.org", "device_id": "ALICEDEV"},
            stream_purposes={"alice-screen-stream": "m.screenshare", camera_stream: "m.usermedia"},
        )
        assert "m=application" in negotiated.sdp  # the data channel section is answered
        await alice.pc.setRemoteDescription(RTCSessionDescription(negotiated.sdp, "answer"))
        await signaling.join(Peer("bob", (20, 230, 20), 1000))

        streams = {s.purpose: s for s in conference.streams_for("bob") if s.kind == "video"}
        assert set(streams) == {"m.usermedia", "m.screenshare"}
        assert streams["m.screenshare"].publisher_track_id == screen.id
        assert streams["m.usermedia"].publisher_track_id == alice.video.id  # type: ignore[union-attr]
        assert streams["m.screenshare"].stream_id != streams["m.usermedia"].stream_id
        assert all(s.publisher_metadata["user_id"] == "@alice:example.org" for s in streams.values())

        received = signaling.peers["bob"].received

        def colours_arrived() -> bool:
            return all(
                (r := received.get(s.track_id)) is not None and r.frames >= 5 and r.last_rgb is not None
                for s in streams.values()
            )

        await signaling.wait_for(colours_arrived, 30, "bob decoding alice's camera and screen")
        for purpose, expected in (("m.usermedia", CAMERA), ("m.screenshare", SCREEN)):
            rgb = received[streams[purpose].track_id].last_rgb
            assert rgb is not None
            assert all(abs(a - b) < 40 for a, b in zip(rgb, expected, strict=True)), (purpose, rgb)
    finally:
        await signaling.close()
