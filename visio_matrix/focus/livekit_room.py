"""What LiveKit clients are told about one room's conference: participants, their tracks, versions.

Every participant of the conference appears, whichever transport it came by: LiveKit clients under
the identity of their token, Matrix-native ones as ``@user:server:DEVICE`` (lk-jwt-service's
``/sfu/get`` identity). Participant sids are the hub's participant ids (``PA_...``); track sids
(``TR_...``) are given here, or by the LiveKit session that answered the publisher's ``add_track``.

Federation links (docs/federation.md) are never announced themselves: a link participant (another
ministry's relay, transport ``federation``) publishes its far side's users' tracks, each owned by
``{"user_id", "device_id"}`` (``PublishedTrack.owner``, the ``publisher_metadata`` subscribers get).
Each distinct owner of a link's tracks is announced as a participant of its own: identity
``@user:server:DEVICE``, sid ``owner_sid(link, owner)`` (stable), name = user id, with that owner's
tracks. It goes (``DISCONNECTED``) with its last track, or with the link. A link track with no owner
is the link's bot's own (as the relay tells Matrix-native subscribers).

Each change bumps the participant's ``version`` (never goes down). A session remembers which
version of each participant it announced; ``changes_for`` gives what it has not been told yet,
departures (``DISCONNECTED``) first, so that a participant replaced under the same identity is
removed before its successor is announced (livekit-client keys participants by identity).
Pure state: the signaling component feeds it hub events and client requests.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from livekit.protocol import models

from ..calls.hub_api import ParticipantView
from ..relay.api import PublishedTrack, StreamInfo

Announced = dict[str, tuple[int, str]]  # participant sid -> (version announced, identity)
Owner = tuple[str, str]  # (user id, device id; "" when the far side gave none)


def new_track_sid() -> str:
    return "TR_" + secrets.token_urlsafe(9)


def room_sid(conference_id: str) -> str:
    return "RM_" + hashlib.sha256(conference_id.encode("utf-8")).hexdigest()[:12]


def mime_of(kind: str, codec: str | None) -> str:
    """A ``TrackInfo.mime_type``: the negotiated codec, else what the relay forwards by default."""
    if codec:
        return codec
    return "audio/opus" if kind == "audio" else "video/VP8"


@dataclass(frozen=True)
class TrackRecord:
    sid: str
    kind: str  # "audio" | "video"
    source: int  # models.TrackSource
    mime_type: str
    name: str = ""
    mid: str = ""
    muted: bool = False
    width: int = 0
    height: int = 0
    encryption: int = models.Encryption.NONE
    stream: str = ""
    stereo: bool = False
    disable_dtx: bool = False
    disable_red: bool = False
    relay_track_id: str | None = None  # set once the relay publishes it

    def info(self) -> models.TrackInfo:
        video = self.kind == "video"
        track = models.TrackInfo(
            sid=self.sid,
            type=models.VIDEO if video else models.AUDIO,
            name=self.name,
            muted=self.muted,
            width=self.width,
            height=self.height,
            simulcast=False,  # the relay forwards one layer
            disable_dtx=self.disable_dtx,
            source=self.source,  # type: ignore[arg-type]
            mime_type=self.mime_type,
            mid=self.mid,
            stereo=self.stereo,
            disable_red=self.disable_red,
            encryption=self.encryption,  # type: ignore[arg-type]
            stream=self.stream,
        )
        codec = track.codecs.add(mime_type=self.mime_type, mid=self.mid)
        if video:
            layer = models.VideoLayer(quality=models.HIGH, width=self.width, height=self.height)
            track.layers.append(layer)
            codec.layers.append(layer)
        return track


def record_for_published(track: PublishedTrack, sid: str | None = None) -> TrackRecord:
    """A track published by a participant that did not describe it (Matrix-native transports)."""
    screen = track.purpose == "m.screenshare"
    if track.kind == "audio":
        source = models.SCREEN_SHARE_AUDIO if screen else models.MICROPHONE
    else:
        source = models.SCREEN_SHARE if screen else models.CAMERA
    return TrackRecord(
        sid=sid or new_track_sid(),
        kind=track.kind,
        source=source,
        mime_type=mime_of(track.kind, track.codec),
        name=track.purpose,
        relay_track_id=track.track_id,
    )


def record_for_stream(stream: StreamInfo, mime_type: str | None) -> TrackRecord:
    """A track known only from a relay stream (the hub did not report it): enough to be received."""
    published = PublishedTrack(
        participant_id=stream.publisher_id,
        track_id=stream.track_id,
        stream_id=stream.stream_id,
        kind=stream.kind,
        codec=mime_type or "",
        purpose=stream.purpose,
        origin_stream_id=None,
        origin_track_id=None,
    )
    return record_for_published(published)


@dataclass(frozen=True)
class Permission:
    can_subscribe: bool = True
    can_publish: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = True


@dataclass
class ParticipantRecord:
    sid: str
    identity: str
    name: str
    joined_at_ms: int
    permission: Permission = field(default_factory=Permission)
    state: int = models.ParticipantInfo.JOINED
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    version: int = 1
    tracks: dict[str, TrackRecord] = field(default_factory=dict)  # track sid -> track

    def info(self) -> models.ParticipantInfo:
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            state=self.state,  # type: ignore[arg-type]
            tracks=[t.info() for t in self.tracks.values()],
            metadata=self.metadata,
            attributes=self.attributes,
            joined_at=self.joined_at_ms // 1000,
            joined_at_ms=self.joined_at_ms,
            version=self.version,
            permission=models.ParticipantPermission(
                can_subscribe=self.permission.can_subscribe,
                can_publish=self.permission.can_publish,
                can_publish_data=self.permission.can_publish_data,
                can_update_metadata=self.permission.can_update_metadata,
            ),
            is_publisher=bool(self.tracks),
            kind=models.ParticipantInfo.STANDARD,
        )


def matrix_identity(view: ParticipantView) -> str:
    """How a participant that did not come through LiveKit appears to LiveKit clients."""
    return f"{view.identity.user_id}:{view.identity.device_id}"


def owner_of(owner: Mapping[str, str] | None, link_identity: Owner) -> Owner:
    """Whose a link's track is: its ``owner`` (``PublishedTrack.owner`` or the stream's
    ``publisher_metadata``), else the link's bot (``link_identity``)."""
    if owner and owner.get("user_id"):
        return owner["user_id"], owner.get("device_id", "")
    return link_identity


def owner_sid(link_sid: str, owner: Owner) -> str:
    """The stable sid of a link's far-side owner: the same link and owner always give the same one."""
    key = "\0".join((link_sid, *owner)).encode("utf-8")
    return "PA_" + hashlib.sha256(key).hexdigest()[:16]


def owner_identity(owner: Owner) -> str:
    """As ``matrix_identity``: ``@user:server:DEVICE`` (the user id alone without a device)."""
    user_id, device_id = owner
    return f"{user_id}:{device_id}" if device_id else user_id


@dataclass
class _Link:
    state: int  # models.ParticipantInfo state, given to its owners
    owners: set[str] = field(default_factory=set)  # owner participant sids
    # An owner back after leaving keeps its sid: its versions go on above the DISCONNECTED one.
    gone_versions: dict[str, int] = field(default_factory=dict)


class RoomState:
    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.participants: dict[str, ParticipantRecord] = {}  # everyone announced, link owners included
        self._by_relay_track: dict[str, tuple[str, str]] = {}  # relay track id -> (participant, track sid)
        self._links: dict[str, _Link] = {}  # link participant id -> its announced owners
        self._owner_link: dict[str, str] = {}  # owner participant sid -> link participant id

    # ---- federation links -----------------------------------------------------------------------

    def add_link(self, link_sid: str, state: int = models.ParticipantInfo.JOINED) -> None:
        """A link participant joined (idempotent; its state changes go to ``set_state``): never
        announced itself; its owners are, with their first track."""
        if link_sid not in self._links:
            self._links[link_sid] = _Link(state)

    def is_link(self, sid: str) -> bool:
        return sid in self._links

    def add_owned_track(self, link_sid: str, owner: Owner, track: TrackRecord, joined_at_ms: int) -> str:
        """``track`` of the link ``link_sid`` belongs to ``owner``: announced under that owner's own
        participant (created if needed). Returns the owner's participant sid."""
        self.add_link(link_sid)
        link = self._links[link_sid]
        sid = owner_sid(link_sid, owner)
        if sid not in self.participants:
            self.participants[sid] = ParticipantRecord(
                sid=sid,
                identity=owner_identity(owner),
                name=owner[0],
                joined_at_ms=joined_at_ms,
                permission=Permission(can_publish_data=False, can_update_metadata=False),
                state=link.state,
                version=link.gone_versions.pop(sid, -1) + 2,
            )
            link.owners.add(sid)
            self._owner_link[sid] = link_sid
        self.add_track(sid, track)
        return sid

    # ---- changes --------------------------------------------------------------------------------

    def add_participant(self, record: ParticipantRecord) -> None:
        old = self.participants.get(record.sid)
        if old is not None:
            record.version = old.version + 1
            record.tracks = {**old.tracks, **record.tracks}
        self.participants[record.sid] = record

    def remove_participant(self, sid: str) -> ParticipantRecord | None:
        """Removes ``sid``; a link takes all its owners with it (and returns None)."""
        link = self._links.pop(sid, None)
        if link is not None:
            for owner in sorted(link.owners):
                self.remove_participant(owner)
            return None
        record = self.participants.pop(sid, None)
        owned_by = self._links.get(self._owner_link.pop(sid, ""))
        if owned_by is not None:
            owned_by.owners.discard(sid)
            if record is not None:
                owned_by.gone_versions[sid] = record.version
        if record is not None:
            for track in record.tracks.values():
                if track.relay_track_id is not None:
                    self._by_relay_track.pop(track.relay_track_id, None)
        return record

    def set_state(self, sid: str, state: int) -> None:
        link = self._links.get(sid)
        if link is not None:
            link.state = state
            for owner in link.owners:
                self.set_state(owner, state)
            return
        record = self.participants.get(sid)
        if record is not None and record.state != state:
            record.state = state
            record.version += 1

    def add_track(self, participant_sid: str, track: TrackRecord) -> bool:
        record = self.participants.get(participant_sid)
        if record is None:
            return False
        record.tracks[track.sid] = track
        record.version += 1
        if track.relay_track_id is not None:
            self._by_relay_track[track.relay_track_id] = (participant_sid, track.sid)
        return True

    def remove_relay_track(self, relay_track_id: str) -> TrackRecord | None:
        where = self._by_relay_track.pop(relay_track_id, None)
        if where is None:
            return None
        record = self.participants.get(where[0])
        if record is None:
            return None
        track = record.tracks.pop(where[1], None)
        record.version += 1
        if not record.tracks and where[0] in self._owner_link:
            self.remove_participant(where[0])  # a link's owner is there only through its tracks
        return track

    def update_track(self, participant_sid: str, track_sid: str, **changes: object) -> TrackRecord | None:
        record = self.participants.get(participant_sid)
        track = record.tracks.get(track_sid) if record is not None else None
        if record is None or track is None:
            return None
        updated = replace(track, **changes)  # type: ignore[arg-type]
        if updated != track:
            record.tracks[track_sid] = updated
            record.version += 1
        return updated

    def update_participant(
        self,
        sid: str,
        *,
        name: str | None = None,
        metadata: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> bool:
        record = self.participants.get(sid)
        if record is None:
            return False
        if name is not None:
            record.name = name
        if metadata is not None:
            record.metadata = metadata
        if attributes is not None:
            for key, value in attributes.items():
                if value == "":
                    record.attributes.pop(key, None)  # LiveKit: an empty value deletes the key
                else:
                    record.attributes[key] = value
        record.version += 1
        return True

    # ---- queries --------------------------------------------------------------------------------

    def track_for_relay(self, relay_track_id: str) -> tuple[str, TrackRecord] | None:
        where = self._by_relay_track.get(relay_track_id)
        if where is None:
            return None
        record = self.participants.get(where[0])
        track = record.tracks.get(where[1]) if record is not None else None
        return (where[0], track) if track is not None else None

    def knows_tracks(self, relay_track_ids: Iterable[str]) -> bool:
        return all(t in self._by_relay_track for t in relay_track_ids)

    def snapshot(self, exclude: str | None = None) -> tuple[list[models.ParticipantInfo], Announced]:
        infos = [r.info() for sid, r in self.participants.items() if sid != exclude]
        return infos, {i.sid: (i.version, i.identity) for i in infos}

    def changes_for(self, announced: Announced, exclude: str | None = None) -> list[models.ParticipantInfo]:
        """What a session that announced ``announced`` must be told now; updates ``announced``."""
        gone = []
        for sid, (version, identity) in list(announced.items()):
            if sid not in self.participants:
                gone.append(
                    models.ParticipantInfo(
                        sid=sid,
                        identity=identity,
                        state=models.ParticipantInfo.DISCONNECTED,
                        version=version + 1,
                    )
                )
                del announced[sid]
        changed = []
        for sid, record in self.participants.items():
            if sid == exclude:
                continue
            seen = announced.get(sid)
            if seen is None or seen[0] < record.version:
                changed.append(record.info())
                announced[sid] = (record.version, record.identity)
        return gone + changed
