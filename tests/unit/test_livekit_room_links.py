"""Federation links as LiveKit clients see them: one participant per far-side owner, never the link."""

from __future__ import annotations

from livekit.protocol import models

from visio_matrix.focus.livekit_room import (
    Announced,
    ParticipantRecord,
    RoomState,
    owner_identity,
    owner_of,
    owner_sid,
    record_for_published,
)
from visio_matrix.relay.api import MediaKind, PublishedTrack

ROOM = "!r:a.example"
LINK, OTHER_LINK = "PA_link", "PA_link2"
BOT = ("@visio:b.example", "BOTDEV")
U1 = ("@u1:b.example", "U1DEV")
U2 = ("@u2:b.example", "U2DEV")
JOINED, ACTIVE, DISCONNECTED = (
    models.ParticipantInfo.JOINED,
    models.ParticipantInfo.ACTIVE,
    models.ParticipantInfo.DISCONNECTED,
)


def track(track_id: str, kind: MediaKind, owner: tuple[str, str] | None = None) -> PublishedTrack:
    return PublishedTrack(
        LINK,
        track_id,
        f"stream-{owner[0] if owner else 'none'}",
        kind,
        "video/VP8" if kind == "video" else "audio/opus",
        "m.usermedia",
        None,
        None,
        owner={"user_id": owner[0], "device_id": owner[1]} if owner else None,
    )


def add(room: RoomState, t: PublishedTrack, link: str = LINK) -> str:
    return room.add_owned_track(link, owner_of(t.owner, BOT), record_for_published(t), 1_700_000_000_000)


def by_identity(infos: list[models.ParticipantInfo]) -> dict[str, models.ParticipantInfo]:
    return {i.identity: i for i in infos}


def room_with_two_owners() -> RoomState:
    room = RoomState(ROOM)
    room.add_participant(ParticipantRecord("PA_alice", "@alice:a.example:A", "alice", 0))
    room.add_link(LINK)
    for t in (
        track("t-u1-a", "audio", U1),
        track("t-u1-v", "video", U1),
        track("t-u2-a", "audio", U2),
        track("t-u2-v", "video", U2),
    ):
        add(room, t)
    return room


def test_owner_sids_are_stable_unique_and_look_like_participant_sids() -> None:
    sid = owner_sid(LINK, U1)
    assert sid == owner_sid(LINK, U1) and sid.startswith("PA_") and len(sid) == 19
    assert len({sid, owner_sid(LINK, U2), owner_sid(OTHER_LINK, U1), owner_sid(LINK, (U1[0], ""))}) == 4
    assert owner_identity(U1) == "@u1:b.example:U1DEV" and owner_identity((U1[0], "")) == U1[0]
    assert owner_of({"user_id": U1[0], "device_id": U1[1]}, BOT) == U1
    assert owner_of({"user_id": U1[0]}, BOT) == (U1[0], "")
    assert owner_of(None, BOT) == owner_of({}, BOT) == BOT


def test_a_link_alone_is_never_announced() -> None:
    room = RoomState(ROOM)
    room.add_link(LINK)
    room.set_state(LINK, ACTIVE)
    infos, announced = room.snapshot()
    assert infos == [] and announced == {} and room.is_link(LINK) and not room.is_link("PA_x")


def test_two_owners_of_one_link_are_two_participants_with_their_tracks() -> None:
    room = room_with_two_owners()
    announced: Announced = {}
    changes = room.changes_for(announced, exclude="PA_alice")
    seen = by_identity(changes)
    assert set(seen) == {"@u1:b.example:U1DEV", "@u2:b.example:U2DEV"}
    assert LINK not in {i.sid for i in changes}
    for owner in (U1, U2):
        info = seen[owner_identity(owner)]
        assert info.sid == owner_sid(LINK, owner) and info.name == owner[0]
        assert info.state == JOINED and info.is_publisher
        assert sorted(t.type for t in info.tracks) == [models.AUDIO, models.VIDEO]
        assert {t.mime_type for t in info.tracks} == {"audio/opus", "video/VP8"}
    # each relay track is found under its owner's participant, with the sid the client was told
    for track_id, owner in (("t-u1-a", U1), ("t-u1-v", U1), ("t-u2-a", U2), ("t-u2-v", U2)):
        found = room.track_for_relay(track_id)
        assert found is not None and found[0] == owner_sid(LINK, owner)
        assert found[1].sid in {t.sid for t in seen[owner_identity(owner)].tracks}
    assert room.knows_tracks(["t-u1-a", "t-u1-v", "t-u2-a", "t-u2-v"])
    # the link connecting makes its owners active (a new version each)
    room.set_state(LINK, ACTIVE)
    after = by_identity(room.changes_for(announced, exclude="PA_alice"))
    assert {i.identity: i.state for i in after.values()} == {
        owner_identity(U1): ACTIVE,
        owner_identity(U2): ACTIVE,
    }
    assert all(after[k].version > seen[k].version for k in after)
    # an owner seen later on an active link starts active
    late = ("@u3:b.example", "U3DEV")
    add(room, track("t-u3-v", "video", late))
    assert room.participants[owner_sid(LINK, late)].state == ACTIVE


def test_an_owner_goes_with_its_last_track() -> None:
    room = room_with_two_owners()
    announced: Announced = {}
    room.changes_for(announced)
    assert room.remove_relay_track("t-u1-v") is not None
    still = room.changes_for(announced)
    assert [(i.identity, len(i.tracks), i.state) for i in still] == [(owner_identity(U1), 1, JOINED)]
    removed = room.remove_relay_track("t-u1-a")
    assert removed is not None and removed.kind == "audio"
    gone = room.changes_for(announced)
    assert [(i.sid, i.identity, i.state) for i in gone] == [
        (owner_sid(LINK, U1), owner_identity(U1), DISCONNECTED)
    ]
    assert room.track_for_relay("t-u1-a") is None and owner_sid(LINK, U1) not in room.participants
    # the same owner publishing again comes back under the same sid, with a version above the last
    add(room, track("t-u1-v2", "video", U1))
    back = room.changes_for(announced)
    assert [(i.sid, i.state) for i in back] == [(owner_sid(LINK, U1), JOINED)]
    assert back[0].version > gone[0].version
    assert set(announced) == {"PA_alice", owner_sid(LINK, U1), owner_sid(LINK, U2)}


def test_the_link_leaving_takes_all_its_owners() -> None:
    room = room_with_two_owners()
    room.add_link(OTHER_LINK)
    add(room, track("t-other", "video", U1), OTHER_LINK)
    announced: Announced = {}
    room.changes_for(announced)
    assert room.remove_participant(LINK) is None
    gone = room.changes_for(announced)
    assert sorted((i.identity, i.state) for i in gone) == [
        (owner_identity(U1), DISCONNECTED),
        (owner_identity(U2), DISCONNECTED),
    ]
    assert {i.sid for i in gone} == {owner_sid(LINK, U1), owner_sid(LINK, U2)}
    assert not room.is_link(LINK)
    assert all(room.track_for_relay(t) is None for t in ("t-u1-a", "t-u1-v", "t-u2-a", "t-u2-v"))
    # the other link's owner (the same far user, reached another way) stays
    assert set(room.participants) == {"PA_alice", owner_sid(OTHER_LINK, U1)}
    assert room.track_for_relay("t-other") is not None


def test_a_link_track_without_owner_is_the_link_bots() -> None:
    room = RoomState(ROOM)
    room.add_link(LINK)
    sid = add(room, track("t-bot", "audio"))
    assert sid == owner_sid(LINK, BOT)
    infos, _ = room.snapshot()
    assert [(i.identity, i.name) for i in infos] == [("@visio:b.example:BOTDEV", "@visio:b.example")]
