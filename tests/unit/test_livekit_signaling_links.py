"""The LiveKit signaling component turning a federation link's hub events into far-side participants
(in-memory hub, no media): hub events, a late-joining room (bootstrap), adopted relay streams."""

from __future__ import annotations

from dataclasses import replace

from livekit.protocol import models

from visio_matrix.calls.hub_api import (
    HubListener,
    Identity,
    ParticipantConnectedEvent,
    ParticipantJoined,
    ParticipantRemoved,
    ParticipantView,
    SpeakerChanged,
    TrackAdded,
    TrackRemoved,
)
from visio_matrix.clock import FakeClock
from visio_matrix.focus.livekit_room import owner_sid
from visio_matrix.focus.livekit_signaling import LiveKitSignaling
from visio_matrix.relay.api import MediaKind, PublishedTrack, StreamInfo

ROOM, CONF, LINK = "!r:a.example", "conf-1", "PA_link"
U1 = {"user_id": "@u1:b.example", "device_id": "U1DEV"}
U2 = {"user_id": "@u2:b.example", "device_id": "U2DEV"}
LINK_VIEW = ParticipantView(
    LINK, CONF, ROOM, Identity("@visio:b.example", "BOTDEV"), "federation", 1_000, False, "b.example"
)
ALICE_VIEW = ParticipantView(
    "PA_alice", CONF, ROOM, Identity("@alice:a.example", "A"), "todevice", 1_000, True
)


def track(track_id: str, kind: MediaKind, owner: dict[str, str] | None) -> PublishedTrack:
    codec = "video/VP8" if kind == "video" else "audio/opus"
    return PublishedTrack(LINK, track_id, "s", kind, codec, "m.usermedia", None, None, owner=owner)


TRACKS = (track("u1-a", "audio", U1), track("u1-v", "video", U1), track("u2-v", "video", U2))


class FakeHub:
    def __init__(self) -> None:
        self.views: dict[str, ParticipantView] = {}
        self.tracks: list[tuple[PublishedTrack, ParticipantView]] = []
        self.listener: HubListener | None = None

    def add_listener(self, listener: HubListener) -> None:
        self.listener = listener

    def participant(self, participant_id: str) -> ParticipantView | None:
        return self.views.get(participant_id)

    def participants(self, room_id: str) -> tuple[ParticipantView, ...]:
        return tuple(self.views.values())

    def published_tracks(self, room_id: str) -> tuple[tuple[PublishedTrack, ParticipantView], ...]:
        return tuple(self.tracks)


def component(hub: FakeHub) -> LiveKitSignaling:
    return LiveKitSignaling(hub, {"k": "s"}, FakeClock())  # type: ignore[arg-type]


def people(signaling: LiveKitSignaling) -> dict[str, tuple[str, int, list[str]]]:
    """identity -> (sid, state, sorted relay track ids) of what LiveKit clients are told."""
    infos, _ = signaling.room(ROOM).snapshot()
    out = {}
    for info in infos:
        relay_ids = sorted(
            t.relay_track_id or "" for t in signaling.room(ROOM).participants[info.sid].tracks.values()
        )
        out[info.identity] = (info.sid, info.state, relay_ids)
    return out


async def test_hub_events_of_a_link_announce_its_owners_not_the_link() -> None:
    hub = FakeHub()
    signaling = component(hub)
    await signaling.on_hub_event(ParticipantJoined(ROOM, CONF, ALICE_VIEW))
    await signaling.on_hub_event(ParticipantJoined(ROOM, CONF, LINK_VIEW))
    assert set(people(signaling)) == {"@alice:a.example:A"}
    for t in TRACKS:
        await signaling.on_hub_event(TrackAdded(ROOM, CONF, t, LINK_VIEW))
    u1, u2 = owner_sid(LINK, ("@u1:b.example", "U1DEV")), owner_sid(LINK, ("@u2:b.example", "U2DEV"))
    joined = models.ParticipantInfo.JOINED
    active = models.ParticipantInfo.ACTIVE
    assert people(signaling) == {
        "@alice:a.example:A": ("PA_alice", active, []),
        "@u1:b.example:U1DEV": (u1, joined, ["u1-a", "u1-v"]),
        "@u2:b.example:U2DEV": (u2, joined, ["u2-v"]),
    }
    connected = replace(LINK_VIEW, connected=True)
    await signaling.on_hub_event(ParticipantConnectedEvent(ROOM, CONF, connected))
    assert {i: p[1] for i, p in people(signaling).items()} == dict.fromkeys(people(signaling), active)

    # The link as active speaker is not announced (LiveKit clients know no such participant)...
    await signaling.on_hub_event(SpeakerChanged(ROOM, CONF, LINK))
    assert signaling._speaker[ROOM] is None
    # ...the far-side user speaking on it is, as its own participant; an owner not announced is not.
    await signaling.on_hub_event(SpeakerChanged(ROOM, CONF, LINK, U1))
    assert signaling._speaker[ROOM] == u1
    await signaling.on_hub_event(SpeakerChanged(ROOM, CONF, LINK, {"user_id": "@x:b.example"}))
    assert signaling._speaker[ROOM] is None

    await signaling.on_hub_event(TrackRemoved(ROOM, CONF, TRACKS[2], connected))
    assert set(people(signaling)) == {"@alice:a.example:A", "@u1:b.example:U1DEV"}
    await signaling.on_hub_event(ParticipantRemoved(ROOM, CONF, connected, "left"))
    assert set(people(signaling)) == {"@alice:a.example:A"}


async def test_a_room_first_seen_with_a_link_in_it_and_adopted_streams() -> None:
    hub = FakeHub()
    hub.views = {LINK: LINK_VIEW, "PA_alice": ALICE_VIEW}
    hub.tracks = [(t, LINK_VIEW) for t in TRACKS[:2]]
    signaling = component(hub)
    signaling._bootstrap(ROOM)
    u1 = owner_sid(LINK, ("@u1:b.example", "U1DEV"))
    assert {i: (p[0], p[2]) for i, p in people(signaling).items()} == {
        "@alice:a.example:A": ("PA_alice", []),
        "@u1:b.example:U1DEV": (u1, ["u1-a", "u1-v"]),
    }
    # A stream the hub did not report (yet): described from the relay's StreamInfo, under its owner.
    stream = StreamInfo("s", "u2-v", "3", "video", "m.usermedia", LINK, "x", publisher_metadata=U2)
    signaling.adopt_stream(ROOM, stream, "video/H264")
    found = signaling.room(ROOM).track_for_relay("u2-v")
    assert found is not None and found[0] == owner_sid(LINK, ("@u2:b.example", "U2DEV"))
    assert found[1].mime_type == "video/H264"
    # ... and one with no owner is the link bot's.
    bare = replace(stream, track_id="bot-a", kind="audio", publisher_metadata={})
    signaling.adopt_stream(ROOM, bare, None)
    assert "@visio:b.example:BOTDEV" in people(signaling)
    assert LINK not in signaling.room(ROOM).participants
