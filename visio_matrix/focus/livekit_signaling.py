"""The LiveKit-compatible signaling endpoint of the focus: what unmodified livekit-client connects to.

Routes (``livekit_routes``), as a LiveKit server 1.13 answers them:

- ``GET /rtc/v1?access_token=JWT&join_request=B64URL`` (WebSocket): protocol 17, one peer
  connection (``livekit_session``). Checked *before* the upgrade, with LiveKit's status codes and
  plain-text bodies: token (401), join request (400), then the hub's admission (403 not a member /
  server not allowed, 404 "requested room does not exist" when there is no call and the token may
  not start one, 400 refused offer). A resume attempt (``reconnect`` in the join request) gets
  ``leave{RECONNECT}``: sessions are not resumable, the client rejoins cleanly.
- ``GET /rtc/v1/validate`` and ``GET /rtc/validate`` (CORS ``*``): the same checks without joining;
  "success" or the error. livekit-client calls them after a failed WebSocket to explain the failure;
  a plain 404 would make it fall back to the v0 path, so 404 is only ever "requested room does not
  exist".
- The legacy ``/rtc`` (v0: two peer connections, server offers) is not served.

``LiveKitSignaling`` is a hub listener: it keeps, per room, what LiveKit clients are told
(``livekit_room.RoomState``), fed by hub events (participants of every transport, their tracks) and
by the sessions (their own tracks' descriptions, mutes, metadata), and pushes each change to every
session of the room. A federation link (transport ``federation``) is not announced: each far-side
owner of its tracks is, as a participant of its own (``RoomState.add_owned_track``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from aiohttp import web
from livekit.protocol import models, rtc

from ..calls.hub_api import (
    ConferenceEnded,
    ConferenceStarted,
    HubApi,
    HubError,
    HubEvent,
    Identity,
    ParticipantConnectedEvent,
    ParticipantJoined,
    ParticipantRemoved,
    ParticipantView,
    RemovalReason,
    SpeakerChanged,
    TrackAdded,
    TrackRemoved,
)
from ..clock import Clock
from ..relay.api import StreamInfo
from ..tasks import TaskOwner
from .identity import livekit_room_name
from .jwt import DEFAULT_LEEWAY_S, TokenClaims, TokenError, verify_token
from .livekit_room import (
    ParticipantRecord,
    Permission,
    RoomState,
    matrix_identity,
    owner_of,
    owner_sid,
    record_for_published,
    record_for_stream,
)
from .livekit_sdp import JoinRequestError, decode_join_request
from .livekit_session import LiveKitSession, SessionSettings

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Max-Age": "86400",
}
MAX_MESSAGE_BYTES = 1024 * 1024
CLOSE_TIMEOUT = 2.0
ROOM_NOT_FOUND = "requested room does not exist"  # livekit-client matches this text (no v0 fallback)
_HUB_ERRORS = {
    "not_a_member": 403,
    "server_not_allowed": 403,
    "no_conference": 404,
    "bad_sdp": 400,
    "bad_guest": 403,
}


class RequestRefused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.text, headers=CORS_HEADERS)


class LiveKitSignaling:
    """``LiveKitSignaling(hub, api_keys, clock)``; registers itself as a hub listener.

    ``api_keys`` maps the JWT issuer (API key) to its secret (``FocusConfig.signing_keys()``). Mount
    ``livekit_routes(signaling)`` and close it before the aiohttp runner's cleanup
    (``app.on_shutdown.append(signaling.on_app_shutdown)``) and before ``hub.stop()``.
    """

    def __init__(
        self,
        hub: HubApi,
        api_keys: Mapping[str, str],
        clock: Clock,
        settings: SessionSettings | None = None,
        token_leeway_s: float = DEFAULT_LEEWAY_S,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.settings = settings or SessionSettings()
        self._keys = dict(api_keys)
        self._leeway = token_leeway_s
        self._rooms: dict[str, RoomState] = {}
        self._sessions: dict[str, LiveKitSession] = {}  # participant id -> session
        self._joining: dict[tuple[str, str, str], LiveKitSession] = {}  # (room, user, device) in hub.join
        self._active_rooms: set[str] = set()
        self._speaker: dict[str, str | None] = {}
        self._changed = asyncio.Event()
        self._all_ended = asyncio.Event()
        self._tasks = TaskOwner("livekit-signaling")
        hub.add_listener(self)

    # ---- HTTP ---------------------------------------------------------------------------------------

    async def rtc_v1(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        if not ws.can_prepare(request).ok:
            return web.Response(status=404, text="WebSocket upgrade expected")
        try:
            claims = self._verify(request)
            join = self._join_request(request)
        except RequestRefused as refused:
            return refused.response()
        if join.reconnect or request.query.get("reconnect") in ("1", "true"):
            return await self._refuse_resume(request, ws)
        visio = claims.visio
        session = LiveKitSession(self, claims, visio.room_id)
        self._bootstrap(visio.room_id)
        offer = join.publisher_offer if join.publisher_offer.sdp else None
        key = (visio.room_id, visio.user_id, visio.device_id)
        self._joining[key] = session
        try:
            joined = await self.hub.join(
                visio.room_id,
                Identity(visio.user_id, visio.device_id, claims.name),
                session,
                transport="livekit",
                offer_sdp=offer.sdp if offer is not None else None,
                mode="sfu_answer_only",
                start_if_none=visio.can_open,
                # /get_token and /sfu/get identities of one device are two LiveKit participants.
                session_key=f"livekit:{claims.identity}",
                guest=visio.guest,
            )
        except HubError as exc:
            status = _HUB_ERRORS.get(exc.code, 500)
            text = f"{ROOM_NOT_FOUND}: {exc}" if exc.code == "no_conference" else str(exc)
            log.info("LiveKit join of %s refused: %s (%s)", visio.user_id, exc.code, exc)
            return web.Response(status=status, text=text, headers=CORS_HEADERS)
        finally:
            if self._joining.get(key) is session:
                del self._joining[key]
        session.attach(joined.participant_id, joined.conference_id)
        self._sessions[joined.participant_id] = session
        self._ensure_participant(session)
        try:
            await ws.prepare(request)
        except BaseException:
            self._sessions.pop(joined.participant_id, None)
            await self.hub.leave(joined.participant_id, RemovalReason.LEFT)
            raise
        log.info(
            "LiveKit client %s (%s) joined %s as %s",
            claims.identity,
            visio.user_id,
            visio.room_id,
            joined.participant_id,
        )
        session.start(
            joined.negotiated if offer is not None else None,
            offer.id if offer is not None else 0,
            offer.sdp if offer is not None else None,
        )
        await session.run(ws)
        return ws

    async def validate_v1(self, request: web.Request) -> web.Response:
        return await self._validate(request, needs_join_request=True)

    async def validate_v0(self, request: web.Request) -> web.Response:
        return await self._validate(request, needs_join_request=False)

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_HEADERS)

    async def _validate(self, request: web.Request, needs_join_request: bool) -> web.Response:
        try:
            claims = self._verify(request)
            if needs_join_request:
                self._join_request(request)
        except RequestRefused as refused:
            return refused.response()
        room_id = claims.visio.room_id
        if not claims.visio.can_open and not self._room_active(room_id):
            return web.Response(status=404, text=ROOM_NOT_FOUND, headers=CORS_HEADERS)
        return web.Response(text="success", headers=CORS_HEADERS)

    def _verify(self, request: web.Request) -> TokenClaims:
        token = request.query.get("access_token", "")
        header = request.headers.get("Authorization", "")
        if not token and header.startswith("Bearer "):
            token = header[len("Bearer ") :]
        if not token:
            raise RequestRefused(401, "no permissions to access the room: no access token")
        try:
            claims = verify_token(token, self._keys, self.clock.wall_ms() / 1000, self._leeway)
        except TokenError as exc:
            raise RequestRefused(401, f"invalid authorization token: {exc}") from None
        visio = claims.visio
        if claims.grants.room != livekit_room_name(visio.room_id, visio.slot_id):
            raise RequestRefused(401, "invalid authorization token: its room grant is not its Matrix room")
        return claims

    def _join_request(self, request: web.Request) -> rtc.JoinRequest:
        try:
            return decode_join_request(request.query.get("join_request", ""))
        except JoinRequestError as exc:
            raise RequestRefused(400, str(exc)) from None

    async def _refuse_resume(self, request: web.Request, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        """Sessions cannot be resumed: tell the client to rejoin from scratch."""
        await ws.prepare(request)
        leave = rtc.LeaveRequest(
            can_reconnect=True, reason=models.STATE_MISMATCH, action=rtc.LeaveRequest.RECONNECT
        )
        await ws.send_bytes(rtc.SignalResponse(leave=leave).SerializeToString())
        await ws.close()
        return ws

    def _room_active(self, room_id: str) -> bool:
        return room_id in self._active_rooms or bool(self.hub.participants(room_id))

    # ---- SessionHost --------------------------------------------------------------------------------

    def room(self, room_id: str) -> RoomState:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = RoomState(room_id)
        return room

    def broadcast(self, room_id: str) -> None:
        for session in list(self._sessions.values()):
            if session.room_id == room_id:
                session.sync()

    async def tracks_known(self, room_id: str, relay_track_ids: list[str], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.room(room_id).knows_tracks(relay_track_ids):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def adopt_stream(self, room_id: str, stream: StreamInfo, mime_type: str | None) -> None:
        room = self.room(room_id)
        if room.track_for_relay(stream.track_id) is not None:
            return
        view = self.hub.participant(stream.publisher_id)
        if view is not None and view.transport == "federation":
            owner = owner_of(stream.publisher_metadata, _link_identity(view))
            record = record_for_stream(stream, mime_type)
            room.add_link(stream.publisher_id, _state_of(view))
            room.add_owned_track(stream.publisher_id, owner, record, self.clock.wall_ms())
            self.broadcast(room_id)
            return
        if stream.publisher_id not in room.participants:
            if view is None:
                return
            room.add_participant(self._record_for(view))
        room.add_track(stream.publisher_id, record_for_stream(stream, mime_type))
        self.broadcast(room_id)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any] | None:
        return self._tasks.spawn(coro, name)

    def session_ended(self, session: LiveKitSession) -> None:
        if self._sessions.get(session.participant_id) is session:
            del self._sessions[session.participant_id]
        if not self._sessions:
            self._all_ended.set()

    # ---- hub events ---------------------------------------------------------------------------------

    async def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, ConferenceStarted):
            self._active_rooms.add(event.room_id)
            return
        if isinstance(event, ConferenceEnded):
            self._active_rooms.discard(event.room_id)
            if not any(s.room_id == event.room_id for s in self._sessions.values()):
                self._rooms.pop(event.room_id, None)
            return
        room = self.room(event.room_id)
        if isinstance(event, ParticipantJoined):
            self._add_view(room, event.participant)
        elif isinstance(event, ParticipantConnectedEvent):
            room.set_state(event.participant.participant_id, models.ParticipantInfo.ACTIVE)
        elif isinstance(event, ParticipantRemoved):
            room.remove_participant(event.participant.participant_id)
        elif isinstance(event, TrackAdded):
            self._track_added(room, event)
        elif isinstance(event, TrackRemoved):
            track = room.remove_relay_track(event.track.track_id)
            session = self._sessions.get(event.owner.participant_id)
            if track is not None and session is not None:
                session.release_published(track)
        elif isinstance(event, SpeakerChanged):
            self._speakers_changed(event)
            return
        self._notify_changed()
        self.broadcast(event.room_id)

    def _track_added(self, room: RoomState, event: TrackAdded) -> None:
        if room.track_for_relay(event.track.track_id) is not None:
            return
        owner = event.owner.participant_id
        if event.owner.transport == "federation":
            room.add_link(owner, _state_of(event.owner))
            who = owner_of(event.track.owner, _link_identity(event.owner))
            room.add_owned_track(owner, who, record_for_published(event.track), self.clock.wall_ms())
            return
        if owner not in room.participants:
            room.add_participant(self._record_for(event.owner))
        session = self._sessions.get(owner)
        record = session.claim_published(event.track) if session else record_for_published(event.track)
        room.add_track(owner, record)

    def _speakers_changed(self, event: SpeakerChanged) -> None:
        speaker = event.participant_id
        room = self.room(event.room_id)
        if speaker is not None and room.is_link(speaker):
            # A far-side user on the link speaks: its own LiveKit participant, when announced.
            owned = owner_sid(speaker, owner_of(event.owner, ("", ""))) if event.owner else None
            speaker = owned if owned is not None and owned in room.participants else None
        previous = self._speaker.get(event.room_id)
        self._speaker[event.room_id] = speaker
        speakers = []
        if previous is not None and previous != speaker:
            speakers.append(models.SpeakerInfo(sid=previous, level=0.0, active=False))
        if speaker is not None:
            speakers.append(models.SpeakerInfo(sid=speaker, level=1.0, active=True))
        if not speakers:
            return
        for session in list(self._sessions.values()):
            if session.room_id == event.room_id:
                session.send_speakers(speakers)

    def _add_view(self, room: RoomState, view: ParticipantView) -> None:
        if view.transport == "federation":
            room.add_link(view.participant_id, _state_of(view))
        else:
            room.add_participant(self._record_for(view))

    def _record_for(self, view: ParticipantView) -> ParticipantRecord:
        key = (view.room_id, view.identity.user_id, view.identity.device_id)
        session = self._sessions.get(view.participant_id) or (
            self._joining.get(key) if view.transport == "livekit" else None
        )
        if session is None:
            return ParticipantRecord(
                sid=view.participant_id,
                identity=matrix_identity(view),
                name=view.identity.display_name or view.identity.user_id,
                joined_at_ms=view.joined_at_ms,
                state=_state_of(view),
            )
        grants = session.claims.grants
        return ParticipantRecord(
            sid=view.participant_id,
            identity=session.identity,
            name=session.claims.name or "",
            joined_at_ms=view.joined_at_ms,
            permission=Permission(
                can_subscribe=grants.can_subscribe,
                can_publish=grants.can_publish,
                can_publish_data=grants.can_publish_data,
                can_update_metadata=grants.can_update_own_metadata,
            ),
        )

    def _ensure_participant(self, session: LiveKitSession) -> None:
        room = self.room(session.room_id)
        if session.participant_id in room.participants:
            return
        view = self.hub.participant(session.participant_id)
        if view is not None:
            room.add_participant(self._record_for(view))
        else:
            room.add_participant(
                ParticipantRecord(session.participant_id, session.identity, "", self.clock.wall_ms())
            )

    def _bootstrap(self, room_id: str) -> None:
        """Participants and tracks the hub had before this component heard of them."""
        room = self.room(room_id)
        for view in self.hub.participants(room_id):
            if view.participant_id not in room.participants and not room.is_link(view.participant_id):
                self._add_view(room, view)
        for track, owner in self.hub.published_tracks(room_id):
            if room.track_for_relay(track.track_id) is not None:
                continue
            if owner.transport == "federation":
                who = owner_of(track.owner, _link_identity(owner))
                room.add_owned_track(
                    owner.participant_id, who, record_for_published(track), owner.joined_at_ms
                )
            elif owner.participant_id in room.participants:
                room.add_track(owner.participant_id, record_for_published(track))

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def on_app_shutdown(self, app: web.Application) -> None:
        """For ``app.on_shutdown``: open WebSockets would otherwise hold the runner's cleanup."""
        await self.close()

    async def close(self) -> None:
        """Tell every connected client the service is going away (they reconnect later)."""
        if not self._sessions:
            await self._tasks.close()
            return
        self._all_ended.clear()
        for session in list(self._sessions.values()):
            session.shutdown()
        try:
            await asyncio.wait_for(self._all_ended.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("%d LiveKit sessions still open at shutdown", len(self._sessions))
        await self._tasks.close()


def _state_of(view: ParticipantView) -> int:
    return models.ParticipantInfo.ACTIVE if view.connected else models.ParticipantInfo.JOINED


def _link_identity(view: ParticipantView) -> tuple[str, str]:
    """A link's own (bot) identity: the owner of its tracks that name none."""
    return view.identity.user_id, view.identity.device_id


def livekit_routes(signaling: LiveKitSignaling) -> list[web.RouteDef]:
    """The routes to mount on the service's aiohttp application (same origin as the token service)."""
    return [
        web.get("/rtc/v1", signaling.rtc_v1, allow_head=False),
        web.get("/rtc/v1/validate", signaling.validate_v1, allow_head=False),
        web.get("/rtc/validate", signaling.validate_v0, allow_head=False),
        web.options("/rtc/v1/validate", signaling.preflight),
        web.options("/rtc/validate", signaling.preflight),
    ]
