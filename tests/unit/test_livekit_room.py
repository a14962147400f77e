"""What LiveKit clients are told about a room: versions, departures, track descriptions."""

from __future__ import annotations

from livekit.protocol import models

from visio_matrix.calls.hub_api import Identity, ParticipantView
from visio_matrix.focus.livekit_room import (
    Announced,
    ParticipantRecord,
    RoomState,
    TrackRecord,
    matrix_identity,
    record_for_published,
    room_sid,
)
from visio_matrix.relay.api import PublishedTrack

ROOM = "!r:hs"


def record(sid: str, identity: str) -> ParticipantRecord:
    return ParticipantRecord(sid=sid, identity=identity, name=identity, joined_at_ms=1_700_000_000_123)


def published(pid: str, track_id: str, kind: str = "video", purpose: str = "m.usermedia") -> PublishedTrack:
    return PublishedTrack(
        pid, track_id, "s", kind, "video/VP8" if kind == "video" else "audio/opus", purpose, None, None
    )  # type: ignore[arg-type]


def test_changes_are_announced_once_with_growing_versions() -> None:
    room = RoomState(ROOM)
    room.add_participant(record("PA_a", "@a:hs:A"))
    room.add_participant(record("PA_b", "@b:hs:B"))
    announced: Announced = {}
    first = room.changes_for(announced, exclude="PA_b")
    assert [(i.sid, i.version) for i in first] == [("PA_a", 1)]
    assert room.changes_for(announced, exclude="PA_b") == []

    room.add_track("PA_a", record_for_published(published("PA_a", "relay-1")))
    room.set_state("PA_a", models.ParticipantInfo.ACTIVE)
    room.set_state("PA_a", models.ParticipantInfo.ACTIVE)  # no change, no new version
    second = room.changes_for(announced, exclude="PA_b")
    assert [(i.sid, i.version, i.state, len(i.tracks)) for i in second] == [
        ("PA_a", 3, models.ParticipantInfo.ACTIVE, 1)
    ]
    assert second[0].is_publisher and second[0].joined_at == 1_700_000_000


def test_departures_come_first_so_a_replacement_under_the_same_identity_survives() -> None:
    room = RoomState(ROOM)
    room.add_participant(record("PA_old", "@a:hs:A"))
    announced: Announced = {}
    room.changes_for(announced)
    room.remove_participant("PA_old")
    room.add_participant(record("PA_new", "@a:hs:A"))
    changes = room.changes_for(announced)
    assert [(i.sid, i.identity, i.state) for i in changes] == [
        ("PA_old", "@a:hs:A", models.ParticipantInfo.DISCONNECTED),
        ("PA_new", "@a:hs:A", models.ParticipantInfo.JOINED),
    ]
    assert changes[0].version == 2  # above the version announced, for clients that compare
    assert set(announced) == {"PA_new"}


def test_tracks_by_relay_id_and_their_updates() -> None:
    room = RoomState(ROOM)
    room.add_participant(record("PA_a", "@a:hs:A"))
    audio = record_for_published(published("PA_a", "relay-a", "audio"))
    screen = record_for_published(published("PA_a", "relay-s", "video", "m.screenshare"))
    room.add_track("PA_a", audio)
    room.add_track("PA_a", screen)
    assert audio.source == models.MICROPHONE and screen.source == models.SCREEN_SHARE
    assert room.knows_tracks(["relay-a", "relay-s"]) and not room.knows_tracks(["relay-a", "nope"])
    found = room.track_for_relay("relay-s")
    assert found is not None and found[0] == "PA_a" and found[1].sid == screen.sid
    version = room.participants["PA_a"].version
    updated = room.update_track("PA_a", screen.sid, muted=True)
    assert updated is not None and updated.muted and room.participants["PA_a"].version == version + 1
    room.update_track("PA_a", screen.sid, muted=True)  # same value: no new version
    assert room.participants["PA_a"].version == version + 1
    assert room.remove_relay_track("relay-s") == updated
    assert room.track_for_relay("relay-s") is None and room.remove_relay_track("relay-s") is None
    assert room.add_track("PA_nobody", audio) is False


def test_metadata_updates_and_attribute_deletion() -> None:
    room = RoomState(ROOM)
    room.add_participant(record("PA_a", "@a:hs:A"))
    room.update_participant("PA_a", name="Alice", metadata="{}", attributes={"k": "v", "x": "y"})
    room.update_participant("PA_a", attributes={"x": ""})
    info = room.participants["PA_a"].info()
    assert (info.name, info.metadata, dict(info.attributes)) == ("Alice", "{}", {"k": "v"})
    assert room.update_participant("PA_nobody", name="x") is False


def test_track_info_always_has_a_mime_type_and_copies_encryption() -> None:
    track = TrackRecord(
        sid="TR_x",
        kind="video",
        source=models.CAMERA,
        mime_type="video/VP8",
        mid="3",
        width=640,
        height=360,
        encryption=models.Encryption.GCM,
    )
    info = track.info()
    assert (info.type, info.mime_type, info.mid, info.encryption) == (
        models.VIDEO,
        "video/VP8",
        "3",
        models.Encryption.GCM,
    )
    assert not info.simulcast and [(layer.width, layer.height) for layer in info.layers] == [(640, 360)]
    assert [c.mime_type for c in info.codecs] == ["video/VP8"]
    unknown_codec = record_for_published(
        PublishedTrack("PA_a", "t", "s", "audio", "", "m.usermedia", None, None)
    ).info()
    assert unknown_codec.mime_type == "audio/opus"


def test_identities_and_room_sid() -> None:
    view = ParticipantView("PA_a", "c", ROOM, Identity("@u:hs", "DEV"), "todevice", 0, False)
    assert matrix_identity(view) == "@u:hs:DEV"
    assert room_sid("conf-1") == room_sid("conf-1") != room_sid("conf-2")
    assert room_sid("conf-1").startswith("RM_")
