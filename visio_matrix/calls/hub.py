"""The conference hub: one conference per room, whichever transport each participant arrives by.

Implements ``hub_api.HubApi``. It owns the mapping room -> conference record -> relay conference,
and participant id -> (identity, transport link). It checks policy and room membership on join,
records participants in the store (summaries, restarts), turns relay events into calls on the
owning transport's link and into ``HubEvent``s for every listener, removes members who left the
room, and ends a conference when it is stopped or its last participant leaves.

Calls into one link are serialized by a per-participant outbox task, so a slow transport never
holds up the relay event pump or other participants.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from visio_matrix.clock import Clock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.metrics import Metrics
from visio_matrix.relay.api import (
    ActiveSpeakerChanged,
    ConferenceApi,
    Negotiated,
    NegotiationNeeded,
    ParticipantConnected,
    ParticipantFailed,
    ParticipantLeft,
    ParticipantMode,
    PublishedTrack,
    RelayApi,
    RelayEvent,
    TrackPublished,
    TrackUnpublished,
)
from visio_matrix.relay.errors import RelayError
from visio_matrix.storage import ConferenceExistsError, ConferenceRecord, ParticipantRecord
from visio_matrix.tasks import TaskOwner

from .hub_api import (
    GUEST_USER_PREFIX,
    ConferenceEnded,
    ConferenceStarted,
    HubError,
    HubEvent,
    HubListener,
    Identity,
    Joined,
    LinkStatusChanged,
    ParticipantConnectedEvent,
    ParticipantJoined,
    ParticipantLink,
    ParticipantRemoved,
    ParticipantView,
    RelayLinkOptions,
    RemovalReason,
    SpeakerChanged,
    TrackAdded,
    TrackRemoved,
    TransportName,
)

log = logging.getLogger(__name__)

LINK_CALL_TIMEOUT = 20.0


class RoomAccess(Protocol):
    """Who is in a room, as the bot sees it (``BotDevice`` backed in production)."""

    async def is_joined(self, room_id: str, user_id: str) -> bool: ...


class HubStore(Protocol):
    async def create_conference(self, room_id: str, started_by: str, now_ms: int) -> ConferenceRecord: ...

    async def get_active_conference(self, room_id: str) -> ConferenceRecord | None: ...

    async def end_conference(
        self, conference_id: str, ended_by: str, now_ms: int
    ) -> ConferenceRecord | None: ...

    async def list_active_conferences(self) -> list[ConferenceRecord]: ...

    async def add_participant(
        self,
        participant_id: str,
        conference_id: str,
        user_id: str,
        device_id: str,
        transport: str,
        transport_data: Mapping[str, str],
        now_ms: int,
    ) -> None: ...

    async def mark_participant_left(self, participant_id: str, reason: str, now_ms: int) -> bool: ...

    async def list_participants(
        self, conference_id: str, present_only: bool = False
    ) -> list[ParticipantRecord]: ...

    async def mark_all_participants_left(self, conference_id: str, reason: str, now_ms: int) -> int: ...


def new_participant_id() -> str:
    """``PA_`` + 12 URL-safe characters: also usable as a LiveKit participant sid."""
    return "PA_" + secrets.token_urlsafe(9)


class _Outbox:
    """Runs one participant's link calls one after the other, in order, each bounded in time."""

    def __init__(self, pid: str, tasks: TaskOwner) -> None:
        self._pid = pid
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._task = tasks.spawn(self._run(), f"outbox-{pid}")

    def put(self, call: Callable[[], Awaitable[None]]) -> None:
        self._queue.put_nowait(call)

    def finish(self) -> None:
        self._queue.put_nowait(None)

    async def _run(self) -> None:
        while True:
            call = await self._queue.get()
            if call is None:
                return
            try:
                await asyncio.wait_for(call(), LINK_CALL_TIMEOUT)
            except Exception:
                log.exception("transport call for participant %s failed", self._pid)


@dataclass
class _Participant:
    view: ParticipantView
    link: ParticipantLink
    outbox: _Outbox
    key: str  # a new join with the same user and key replaces this one


@dataclass
class _Room:
    room_id: str
    record: ConferenceRecord
    relay: ConferenceApi
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    participants: dict[str, _Participant] = field(default_factory=dict)
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # relay track id -> track
    # Only a call someone was really in ends by itself when it empties: a declined ring or a failed
    # first join leaves a freshly started call running.
    ever_connected: bool = False
    # Federation: the far sides' participants, per linked server, as their bots report them.
    remote: dict[str, tuple[Identity, ...]] = field(default_factory=dict)

    def local(self) -> list[_Participant]:
        """Participants served here (not links to other ministries' relays)."""
        return [p for p in self.participants.values() if p.view.link_server is None]

    def head_count(self) -> int:
        return len(self.local()) + sum(len(r) for r in self.remote.values())


class ConferenceHub:
    def __init__(
        self,
        relay: RelayApi,
        relay_events: asyncio.Queue[RelayEvent],
        store: HubStore,
        access: RoomAccess,
        policy: PolicyConfig,
        clock: Clock,
        metrics: Metrics,
        end_when_empty: bool = True,
    ) -> None:
        self._relay = relay
        self._relay_events = relay_events
        self._store = store
        self._access = access
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._end_when_empty = end_when_empty
        self._rooms: dict[str, _Room] = {}
        self._by_conference: dict[str, str] = {}  # conference id -> room id
        self._where: dict[str, str] = {}  # participant id -> room id
        self._listeners: list[HubListener] = []
        self._tasks = TaskOwner("conference-hub")
        self._outbox_tasks = TaskOwner("conference-hub-outboxes")
        self._create_lock = asyncio.Lock()
        self._restorable: list[tuple[ConferenceRecord, ParticipantRecord]] = []
        self._joining: dict[str, list[RelayEvent]] = {}  # participant id -> events held during join

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load active conferences; participants present at the last stop become ``restorable``."""
        for record in await self._store.list_active_conferences():
            for participant in await self._store.list_participants(record.conference_id, present_only=True):
                self._restorable.append((record, participant))
                # They are not in the relay any more; their transport brings them back (re-invite).
                await self._store.mark_participant_left(
                    participant.participant_id, RemovalReason.SHUTDOWN, self._clock.wall_ms()
                )
        self._tasks.spawn(self._pump(), "relay-events")
        if self._restorable:
            log.info("%d participants to bring back after restart", len(self._restorable))

    def take_restorable(self, transport: TransportName) -> list[tuple[ConferenceRecord, ParticipantRecord]]:
        """Participants of ``transport`` who were in a call when the service last stopped (once)."""
        mine = [item for item in self._restorable if item[1].transport == transport]
        self._restorable = [item for item in self._restorable if item[1].transport != transport]
        return mine

    async def stop(self) -> None:
        """Close media without telling participants: they stay "present" in the store, and the next
        start brings them back (``take_restorable``); transports close their own connections."""
        await self._tasks.close()
        for room in list(self._rooms.values()):
            for p in list(room.participants.values()):
                p.outbox.finish()
            try:
                await self._relay.close_conference(room.record.conference_id)
            except RelayError:
                pass
        # Give the outboxes a moment to say goodbye, then cancel what is left.
        await asyncio.sleep(0)
        await self._outbox_tasks.close()
        self._rooms.clear()

    def add_listener(self, listener: HubListener) -> None:
        self._listeners.append(listener)

    # ---- conferences ---------------------------------------------------------------------------

    async def start_conference(self, room_id: str, started_by: str) -> ConferenceRecord:
        """Create the room's conference; raise ``ConferenceExistsError`` when one is active."""
        record = await self._store.create_conference(room_id, started_by, self._clock.wall_ms())
        self._metrics.active_conferences.inc()
        await self._emit(ConferenceStarted(room_id, record.conference_id, started_by, record.started_at_ms))
        return record

    async def end_conference(self, room_id: str, ended_by: str) -> ConferenceEnded | None:
        """End the room's active conference: everyone is removed, the record is closed."""
        active = await self._store.get_active_conference(room_id)
        if active is None:
            return None
        room = self._rooms.get(room_id)
        if room is not None:
            async with room.lock:
                for pid in list(room.participants):
                    await self._remove(room, pid, RemovalReason.CONFERENCE_ENDED, notify=True)
        return await self._finish(active, ended_by)

    async def _finish(self, active: ConferenceRecord, ended_by: str) -> ConferenceEnded | None:
        now = self._clock.wall_ms()
        ended = await self._store.end_conference(active.conference_id, ended_by, now)
        room = self._rooms.pop(active.room_id, None)
        self._by_conference.pop(active.conference_id, None)
        if room is not None:
            try:
                await self._relay.close_conference(active.conference_id)
            except RelayError:
                pass
        if ended is None:
            return None
        self._metrics.active_conferences.dec()
        await self._store.mark_all_participants_left(
            active.conference_id, RemovalReason.CONFERENCE_ENDED, now
        )
        users: list[str] = []
        for p in await self._store.list_participants(active.conference_id):
            if p.user_id not in users:
                users.append(p.user_id)
        event = ConferenceEnded(
            active.room_id,
            active.conference_id,
            ended_by,
            ended.started_at_ms,
            ended.ended_at_ms or now,
            tuple(users),
        )
        await self._emit(event)
        return event

    async def _room_for(self, room_id: str, identity: Identity, start_if_none: bool) -> _Room:
        async with self._create_lock:
            room = self._rooms.get(room_id)
            if room is not None:
                return room
            record = await self._store.get_active_conference(room_id)
            if record is None:
                if not start_if_none:
                    raise HubError("no_conference", "There is no call in this room right now.")
                try:
                    record = await self.start_conference(room_id, identity.user_id)
                except ConferenceExistsError:
                    record = await self._store.get_active_conference(room_id)
                    if record is None:
                        raise HubError("no_conference", "The call in this room just ended.") from None
            try:
                conference = self._relay.conference(record.conference_id)
            except RelayError:
                conference = await self._relay.create_conference(record.conference_id)
            room = _Room(room_id, record, conference)
            self._rooms[room_id] = room
            self._by_conference[record.conference_id] = room_id
            return room

    # ---- participants --------------------------------------------------------------------------

    async def join(
        self,
        room_id: str,
        identity: Identity,
        link: ParticipantLink,
        *,
        transport: TransportName,
        offer_sdp: str | None = None,
        mode: ParticipantMode = "sfu",
        stream_purposes: Mapping[str, str] | None = None,
        start_if_none: bool = False,
        transport_data: Mapping[str, str] | None = None,
        session_key: str | None = None,
        guest: bool = False,
        relay_link: RelayLinkOptions | None = None,
    ) -> Joined:
        if relay_link is not None:
            # Another ministry's relay: its bot must be in the room; the transport checked the rest.
            if not await self._access.is_joined(room_id, identity.user_id):
                raise HubError("not_a_member", "The linking bot is not a member of the room.")
        elif guest:
            # Admitted from the lobby by a room member: no Matrix account, so no membership to check.
            if not identity.user_id.startswith(GUEST_USER_PREFIX):
                raise HubError("bad_guest", "A guest's identity must start with 'guest:'.")
        else:
            if not self._policy.user_allowed(identity.user_id):
                server = identity.user_id.partition(":")[2]
                if self._policy.link_allowed(server):
                    raise HubError(
                        "server_not_allowed",
                        f"Call through your own ministry's bot: users of {server} are served by it, "
                        "and the two calls are linked.",
                    )
                raise HubError(
                    "server_not_allowed", "Users of your homeserver may not join calls on this service."
                )
            if not await self._access.is_joined(room_id, identity.user_id):
                raise HubError("not_a_member", "Only members of the room can join its call.")
        room = await self._room_for(room_id, identity, start_if_none)
        async with room.lock:
            if self._rooms.get(room_id) is not room:
                raise HubError("no_conference", "The call in this room just ended.")
            key = (identity.user_id, session_key or identity.device_id)
            for old in [p for p in room.participants.values() if (p.view.identity.user_id, p.key) == key]:
                await self._remove(room, old.view.participant_id, RemovalReason.REPLACED, notify=True)
            if relay_link is None and room.head_count() >= self._policy.max_participants:
                raise HubError(
                    "conference_full",
                    f"The call is full ({self._policy.max_participants} participants at most).",
                )
            pid = new_participant_id()
            # The relay emits events for this participant (its tracks) while add_participant runs:
            # they wait here until it is registered, then are handled in order.
            self._joining[pid] = []
            try:
                metadata = {"user_id": identity.user_id, "device_id": identity.device_id}
                if relay_link is None:
                    negotiated = await room.relay.add_participant(
                        pid,
                        offer_sdp=offer_sdp,
                        mode=mode,
                        metadata=metadata,
                        stream_purposes=stream_purposes,
                    )
                else:
                    negotiated = await room.relay.add_participant(
                        pid,
                        offer_sdp=offer_sdp,
                        mode=mode,
                        metadata=metadata,
                        link=True,
                        allow_onward=relay_link.allow_onward,
                        onward_ok=relay_link.onward_ok,
                        stream_owners=relay_link.stream_owners,
                    )
            except RelayError as exc:
                self._joining.pop(pid, None)
                raise HubError("bad_sdp", f"The call could not be set up: {exc}") from exc
            except BaseException:
                self._joining.pop(pid, None)
                raise
            now = self._clock.wall_ms()
            view = ParticipantView(
                pid,
                room.record.conference_id,
                room_id,
                identity,
                transport,
                now,
                False,
                relay_link.server_name if relay_link else None,
            )
            room.participants[pid] = _Participant(
                view, link, _Outbox(pid, self._outbox_tasks), session_key or identity.device_id
            )
            self._where[pid] = room_id
            await self._store.add_participant(
                pid,
                room.record.conference_id,
                identity.user_id,
                identity.device_id,
                transport,
                dict(transport_data or {}),
                now,
            )
        log.info(
            "%s (%s, %s) joined the call in %s as %s",
            identity.user_id,
            identity.device_id,
            transport,
            room_id,
            pid,
        )
        await self._emit(ParticipantJoined(room_id, room.record.conference_id, view))
        for event in self._joining.pop(pid, []):
            await self._on_relay_event(event)
        return Joined(pid, room.record.conference_id, room_id, negotiated)

    def _room_of(self, participant_id: str) -> _Room:
        room_id = self._where.get(participant_id)
        room = self._rooms.get(room_id) if room_id else None
        if room is None or participant_id not in room.participants:
            raise HubError("unknown_participant", "This call session is not in a conference any more.")
        return room

    async def apply_offer(
        self,
        participant_id: str,
        offer_sdp: str,
        stream_purposes: Mapping[str, str] | None = None,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Negotiated:
        room = self._room_of(participant_id)
        try:
            if stream_owners is not None:
                return await room.relay.apply_offer(participant_id, offer_sdp, stream_purposes, stream_owners)
            return await room.relay.apply_offer(participant_id, offer_sdp, stream_purposes)
        except RelayError as exc:
            raise HubError("bad_sdp", f"The new offer was refused: {exc}") from exc

    async def accept_answer(
        self,
        participant_id: str,
        answer_sdp: str,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
        onward_ok: bool | None = None,
    ) -> None:
        room = self._room_of(participant_id)
        try:
            if stream_owners is not None or onward_ok is not None:
                await room.relay.accept_answer(participant_id, answer_sdp, stream_owners, onward_ok)
            else:
                await room.relay.accept_answer(participant_id, answer_sdp)
        except RelayError as exc:
            raise HubError("bad_sdp", f"The answer was refused: {exc}") from exc

    async def request_offer(self, participant_id: str, add_audio: int = 0, add_video: int = 0) -> None:
        """A new relay offer for a link participant, with that many more receive sections (the far
        relay needs them for its streams): it comes back through the link's ``send_offer``."""
        room = self._room_of(participant_id)
        try:
            await room.relay.request_offer(participant_id, add_audio=add_audio, add_video=add_video)
        except RelayError as exc:
            raise HubError("bad_request", f"No new offer: {exc}") from exc

    # ---- federation ------------------------------------------------------------------------------

    async def set_remote_participants(
        self, room_id: str, server_name: str, remote: tuple[Identity, ...]
    ) -> None:
        """What a linked ministry's bot reports as its side of the room's call (empty: none, or the
        link is gone). Counts toward ``policy.max_participants`` and keeps the call from ending while
        people are in it on the far side."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        if remote:
            room.remote[server_name] = remote
            room.ever_connected = True
        else:
            room.remote.pop(server_name, None)
        await self._end_if_empty(room)

    async def active_rooms(self) -> list[str]:
        """Rooms with an active conference (started here or brought in by a link), loaded or not."""
        return [record.room_id for record in await self._store.list_active_conferences()]

    def remote_participants(self, room_id: str) -> dict[str, tuple[Identity, ...]]:
        room = self._rooms.get(room_id)
        return dict(room.remote) if room else {}

    def local_participants(self, room_id: str) -> tuple[ParticipantView, ...]:
        """The room's participants served here (not the links to other ministries)."""
        room = self._rooms.get(room_id)
        return tuple(p.view for p in room.local()) if room else ()

    async def announce(self, event: LinkStatusChanged) -> None:
        """Tell every listener (room status) about a federation link's state."""
        await self._emit(event)

    async def add_ice_candidate(
        self,
        participant_id: str,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        room = self._room_of(participant_id)
        try:
            await room.relay.add_ice_candidate(participant_id, candidate, sdp_mid, sdp_mline_index)
        except RelayError as exc:
            raise HubError("bad_candidate", f"The ICE candidate was refused: {exc}") from exc

    async def leave(self, participant_id: str, reason: str = RemovalReason.LEFT) -> None:
        room_id = self._where.get(participant_id)
        room = self._rooms.get(room_id) if room_id else None
        if room is None:
            return
        async with room.lock:
            await self._remove(room, participant_id, reason, notify=False)
        await self._end_if_empty(room)

    async def on_membership(self, room_id: str, user_id: str, membership: str) -> None:
        """A member event: anyone who is no longer joined is removed from the room's call at once."""
        if membership == "join":
            return
        room = self._rooms.get(room_id)
        if room is None:
            return
        async with room.lock:
            for pid, p in list(room.participants.items()):
                if p.view.identity.user_id == user_id:
                    log.info(
                        "%s is now '%s' in %s: removing %s from the call", user_id, membership, room_id, pid
                    )
                    await self._remove(room, pid, RemovalReason.NOT_A_MEMBER, notify=True)
        await self._end_if_empty(room)

    def participant(self, participant_id: str) -> ParticipantView | None:
        room_id = self._where.get(participant_id)
        room = self._rooms.get(room_id) if room_id else None
        p = room.participants.get(participant_id) if room else None
        return p.view if p else None

    def participants(self, room_id: str) -> tuple[ParticipantView, ...]:
        room = self._rooms.get(room_id)
        return tuple(p.view for p in room.participants.values()) if room else ()

    def published_tracks(self, room_id: str) -> tuple[tuple[PublishedTrack, ParticipantView], ...]:
        room = self._rooms.get(room_id)
        if room is None:
            return ()
        out = []
        for track in room.tracks.values():
            owner = room.participants.get(track.participant_id)
            if owner is not None:
                out.append((track, owner.view))
        return tuple(out)

    def conference_of_room(self, room_id: str) -> str | None:
        """The id of the room's running conference as far as media goes (None: none in the relay yet)."""
        room = self._rooms.get(room_id)
        return room.record.conference_id if room else None

    def room_of_conference(self, conference_id: str) -> str | None:
        return self._by_conference.get(conference_id)

    async def _remove(self, room: _Room, pid: str, reason: str, notify: bool) -> None:
        """Caller holds ``room.lock``."""
        p = room.participants.pop(pid, None)
        self._where.pop(pid, None)
        if p is None:
            return
        for track_id in [t for t, track in room.tracks.items() if track.participant_id == pid]:
            track = room.tracks.pop(track_id)
            await self._emit(TrackRemoved(room.room_id, room.record.conference_id, track, p.view))
        try:
            await room.relay.remove_participant(pid)
        except RelayError:
            pass
        await self._store.mark_participant_left(pid, reason, self._clock.wall_ms())
        if notify:
            p.outbox.put(lambda: p.link.closed(reason))
        p.outbox.finish()
        await self._emit(ParticipantRemoved(room.room_id, room.record.conference_id, p.view, reason))

    async def _end_if_empty(self, room: _Room) -> None:
        if (
            not self._end_when_empty
            or not room.ever_connected
            or room.local()
            or any(room.remote.values())
            or self._rooms.get(room.room_id) is not room
        ):
            return
        log.info("last participant left the call in %s: ending it", room.room_id)
        await self._finish(room.record, "")

    # ---- relay events --------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            event = await self._relay_events.get()
            try:
                await self._on_relay_event(event)
            except Exception:
                log.exception("error handling relay event %s", type(event).__name__)

    async def _on_relay_event(self, event: RelayEvent) -> None:
        about = event.track.participant_id if isinstance(event, (TrackPublished, TrackUnpublished)) else None
        if isinstance(event, (NegotiationNeeded, ParticipantConnected, ParticipantFailed, ParticipantLeft)):
            about = event.participant_id
        if about is not None and about in self._joining:
            self._joining[about].append(event)
            return
        room_id = self._by_conference.get(event.conference_id)
        room = self._rooms.get(room_id) if room_id else None
        if room is None:
            return
        if isinstance(event, ActiveSpeakerChanged):
            await self._emit(
                SpeakerChanged(room.room_id, room.record.conference_id, event.participant_id, event.owner)
            )
            return
        if isinstance(event, (TrackPublished, TrackUnpublished)):
            owner = room.participants.get(event.track.participant_id)
            if owner is None:
                return
            if isinstance(event, TrackPublished):
                room.tracks[event.track.track_id] = event.track
                await self._emit(TrackAdded(room.room_id, room.record.conference_id, event.track, owner.view))
            elif room.tracks.pop(event.track.track_id, None) is not None:
                await self._emit(
                    TrackRemoved(room.room_id, room.record.conference_id, event.track, owner.view)
                )
            return
        p = room.participants.get(event.participant_id)
        if p is None:
            return
        if isinstance(event, NegotiationNeeded):
            negotiated = Negotiated(event.offer_sdp, event.streams)
            p.outbox.put(lambda: p.link.send_offer(negotiated))
        elif isinstance(event, ParticipantConnected):
            p.view = replace(p.view, connected=True)
            room.ever_connected = room.ever_connected or p.view.link_server is None
            await self._emit(ParticipantConnectedEvent(room.room_id, room.record.conference_id, p.view))
        elif isinstance(event, (ParticipantFailed, ParticipantLeft)):
            reason = (
                RemovalReason.MEDIA_FAILED if isinstance(event, ParticipantFailed) else RemovalReason.LEFT
            )
            async with room.lock:
                await self._remove(room, event.participant_id, reason, notify=True)
            await self._end_if_empty(room)

    async def _emit(self, event: HubEvent) -> None:
        for listener in list(self._listeners):
            try:
                await listener.on_hub_event(event)
            except Exception:
                log.exception("hub listener %r failed on %s", listener, type(event).__name__)
