"""One LiveKit client connection (``/rtc/v1`` WebSocket, protocol 17, one peer connection).

The session is the client's transport into the conference hub (``ParticipantLink``). The client
always offers: its first offer (in the join request, or right after the join response) and every
re-offer go to ``hub.apply_offer``; the answer echoes the offer's id and maps each receiving m-line
to its track sid (``mid_to_track_id``). The relay never offers to it (participant mode
``sfu_answer_only``): when the tracks it must receive change, the hub's ``send_offer`` carries no
SDP and the session asks the client to re-offer with ``media_sections_requirement`` (one new
m-line per stream that found no free one). Before any answer, every publisher in it is announced
(``update``), since livekit-client drops a track whose participant it does not know.

::

    WS open --> join (participant, others) [--> answer to the offer in the join request]
    client: offer -----------------------------------------> answer (id, mid_to_track_id)
    client: add_track --> track_published (TR_ sid) ; its re-offer publishes it in the relay
    hub: send_offer ---> media_sections_requirement --> client re-offers --> answer
    client: trickle / mute / ping / ping_req / update_metadata / leave ; others logged, ignored
    hub: closed(reason) --> leave (+ close)         client gone / ping timeout --> hub.leave

Messages are handled one at a time, in order; everything the session sends goes through one
queue and one writer task (the join response first). Time comes from the injected ``Clock``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from ..calls.hub_api import HubApi, HubError, RemovalReason
from ..clock import Clock
from ..relay.api import Negotiated, PublishedTrack, StreamInfo
from ..tasks import TaskOwner
from .jwt import TokenClaims
from .livekit_room import Announced, RoomState, TrackRecord, new_track_sid, record_for_published, room_sid
from .livekit_sdp import parse_candidate_init, rewrite_msids, section_codecs, sending_mids

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 17  # the LiveKit signaling protocol spoken (livekit-client >= 2.19, /rtc/v1)
SERVER_VERSION = "1.13.5"  # the LiveKit server whose client-facing behaviour this follows
NODE_ID = "visio-matrix"
PUBLISH_CODECS = ("video/VP8", "video/H264", "audio/opus")  # what the relay forwards
_CODEC_NAMES = {"vp8": "video/VP8", "h264": "video/H264", "opus": "audio/opus"}
TRACKS_KNOWN_TIMEOUT = 2.0
WRITER_FLUSH_TIMEOUT = 2.0  # wait this long for the hub to report tracks before answering with them
IGNORED_REQUESTS = frozenset(
    {
        "subscription",
        "track_setting",
        "update_layers",
        "subscription_permission",
        "sync_state",
        "simulate",
        "update_audio_track",
        "update_video_track",
        "publish_data_track_request",
        "unpublish_data_track_request",
        "update_data_subscription",
        "store_data_blob_request",
        "get_data_blob_request",
        "answer",  # the server never offers in v1
    }
)
_LEAVES = {
    RemovalReason.LEFT: (models.CLIENT_INITIATED, rtc.LeaveRequest.DISCONNECT),
    RemovalReason.NOT_A_MEMBER: (models.PARTICIPANT_REMOVED, rtc.LeaveRequest.DISCONNECT),
    RemovalReason.CONFERENCE_ENDED: (models.ROOM_CLOSED, rtc.LeaveRequest.DISCONNECT),
    RemovalReason.REPLACED: (models.DUPLICATE_IDENTITY, rtc.LeaveRequest.DISCONNECT),
    RemovalReason.MEDIA_FAILED: (models.MEDIA_FAILURE, rtc.LeaveRequest.RECONNECT),
    RemovalReason.SHUTDOWN: (models.SERVER_SHUTDOWN, rtc.LeaveRequest.RECONNECT),
}


@dataclass(frozen=True)
class SessionSettings:
    ping_interval_s: int = 5
    ping_timeout_s: int = 15
    ice_servers: tuple[rtc.ICEServer, ...] = ()


class SessionHost(Protocol):
    """What a session needs from the signaling component that owns it."""

    hub: HubApi
    clock: Clock
    settings: SessionSettings

    def room(self, room_id: str) -> RoomState: ...

    def broadcast(self, room_id: str) -> None: ...

    async def tracks_known(self, room_id: str, relay_track_ids: list[str], timeout: float) -> bool: ...

    def adopt_stream(self, room_id: str, stream: StreamInfo, mime_type: str | None) -> None: ...

    def session_ended(self, session: LiveKitSession) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any] | None: ...


def leave_message(reason: str) -> rtc.SignalResponse:
    disconnect, action = _LEAVES.get(reason, (models.UNKNOWN_REASON, rtc.LeaveRequest.DISCONNECT))
    can_reconnect = action == rtc.LeaveRequest.RECONNECT
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(reason=disconnect, action=action, can_reconnect=can_reconnect)
    )


def requested_mime(request: rtc.AddTrackRequest) -> str:
    kind_audio = request.type == models.AUDIO
    for codec in request.simulcast_codecs:
        mime = _CODEC_NAMES.get(codec.codec.lower().split("/")[-1])
        if mime is not None and mime.startswith("audio" if kind_audio else "video"):
            return mime
    return "audio/opus" if kind_audio else "video/VP8"


@dataclass
class _Own:
    """The client's own tracks: described by add_track, published by the relay from its offers."""

    pending: dict[str, TrackRecord] = field(default_factory=dict)  # cid -> answered, not yet published
    published: dict[str, str] = field(default_factory=dict)  # cid -> track sid
    mids: dict[str, str] = field(default_factory=dict)  # cid -> the client's mid (from its offers)


class LiveKitSession:
    """A connected LiveKit client. Created after the token is verified; ``attach`` after hub.join."""

    def __init__(self, host: SessionHost, claims: TokenClaims, room_id: str) -> None:
        self.host = host
        self.claims = claims
        self.room_id = room_id
        self.identity = claims.identity
        self.participant_id = ""
        self.conference_id = ""
        self._announced: Announced = {}
        self._own = _Own()
        self._queue: asyncio.Queue[rtc.SignalResponse | None] = asyncio.Queue()
        self._deferred: list[rtc.SignalResponse] = []
        self._started = False
        self._negotiated = False  # an offer of the client has been answered
        self._early_candidates: list[rtc.TrickleRequest] = []
        self._json = False
        self._writer: asyncio.Task[None] | None = None
        self._tasks = TaskOwner("livekit-session")
        self._last_seen = host.clock.now()
        self._removed = False  # the hub removed it, or it left: no hub.leave on close
        self._closing = False
        self._writer_stopping = False

    # ---- set-up -----------------------------------------------------------------------------------

    def attach(self, participant_id: str, conference_id: str) -> None:
        self.participant_id = participant_id
        self.conference_id = conference_id

    def start(self, first_answer: Negotiated | None, offer_id: int, offer_sdp: str | None) -> None:
        """Queue the join response (first), then the answer to the join request's offer."""
        self._queue.put_nowait(rtc.SignalResponse(join=self._join_response()))
        self._started = True
        for message in self._deferred:
            self._queue.put_nowait(message)
        self._deferred.clear()
        if first_answer is not None and offer_sdp is not None:
            self._own.mids.update(sending_mids(offer_sdp))
            self._negotiated = True
            self._tasks.spawn(self._send_answer(first_answer, offer_id), "first-answer")
        self.sync()

    def _join_response(self) -> rtc.JoinResponse:
        room = self.host.room(self.room_id)
        others, self._announced = room.snapshot(exclude=self.participant_id)
        me = room.participants[self.participant_id].info()
        settings = self.host.settings
        codecs = [models.Codec(mime=mime) for mime in PUBLISH_CODECS]
        return rtc.JoinResponse(
            room=models.Room(
                sid=room_sid(self.conference_id),
                name=self.claims.grants.room,
                num_participants=len(room.participants),
                enabled_codecs=codecs,
            ),
            participant=me,
            other_participants=others,
            server_version=SERVER_VERSION,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Standard,
                version=SERVER_VERSION,
                protocol=PROTOCOL_VERSION,
                node_id=NODE_ID,
            ),
            ice_servers=list(settings.ice_servers),
            subscriber_primary=False,
            ping_timeout=settings.ping_timeout_s,
            ping_interval=settings.ping_interval_s,
            enabled_publish_codecs=codecs,
        )

    # ---- the connection ---------------------------------------------------------------------------

    async def run(self, ws: web.WebSocketResponse) -> None:
        """Serve the client until it leaves, the connection drops or the hub removes it."""
        self._writer = self._tasks.spawn(self._write_loop(ws), "writer")
        self._tasks.spawn(self._watchdog(), "ping-watchdog")
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    await self._on_frame(message.data, as_json=False)
                elif message.type == WSMsgType.TEXT:
                    await self._on_frame(message.data, as_json=True)
                elif message.type == WSMsgType.ERROR:
                    log.info("participant %s: WebSocket error: %s", self.participant_id, ws.exception())
                    break
                if self._closing:
                    break
        finally:
            # aiohttp may cancel this handler once the socket is gone: the clean-up runs in a task
            # of the component's, which outlives it.
            self._closing = True
            self._stop_writer()
            self.host.session_ended(self)
            cleanup = self.host.spawn(self._finish(), f"finish:{self.participant_id}")
            if cleanup is not None:
                await asyncio.shield(cleanup)

    async def _on_frame(self, data: bytes | str, as_json: bool) -> None:
        self._last_seen = self.host.clock.now()
        request = rtc.SignalRequest()
        try:
            if as_json:
                json_format.Parse(data, request, ignore_unknown_fields=True)
                self._json = True
            else:
                request.ParseFromString(data)  # type: ignore[arg-type]
        except (DecodeError, json_format.ParseError, TypeError, ValueError) as exc:
            log.warning("participant %s: unreadable signal message ignored: %s", self.participant_id, exc)
            return
        try:
            await self.handle(request)
        except HubError as exc:
            if exc.code == "unknown_participant":
                log.info("participant %s is no longer in the conference: closing", self.participant_id)
                self._removed = True
                self._closing = True
            else:
                log.warning("participant %s: %s refused: %s", self.participant_id, exc.code, exc)
        except Exception:
            # A bug must not cost the client its call: log it, keep serving.
            log.exception(
                "participant %s: error handling %s", self.participant_id, request.WhichOneof("message")
            )

    async def handle(self, request: rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        if kind == "offer":
            await self._on_offer(request.offer)
        elif kind == "trickle":
            await self._on_trickle(request.trickle)
        elif kind == "add_track":
            self._on_add_track(request.add_track)
        elif kind == "mute":
            self._on_mute(request.mute)
        elif kind == "ping":
            self._send(rtc.SignalResponse(pong=self.host.clock.wall_ms()))
        elif kind == "ping_req":
            pong = rtc.Pong(
                last_ping_timestamp=request.ping_req.timestamp, timestamp=self.host.clock.wall_ms()
            )
            self._send(rtc.SignalResponse(pong_resp=pong))
        elif kind == "update_metadata":
            self._on_update_metadata(request.update_metadata)
        elif kind == "leave":
            log.info("participant %s left", self.participant_id)
            self._removed = True
            self._closing = True
            await self.host.hub.leave(self.participant_id, RemovalReason.LEFT)
        elif kind in IGNORED_REQUESTS:
            log.debug("participant %s: %s ignored", self.participant_id, kind)
        else:
            log.debug("participant %s: unknown signal request %r ignored", self.participant_id, kind)

    # ---- negotiation ------------------------------------------------------------------------------

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        if offer.type != "offer":
            log.warning("participant %s: %r description ignored", self.participant_id, offer.type)
            return
        self._own.mids.update(sending_mids(offer.sdp))
        negotiated = await self.host.hub.apply_offer(self.participant_id, offer.sdp)
        if not self._negotiated:
            self._negotiated = True
            for early in self._early_candidates:
                await self._on_trickle(early)
            self._early_candidates.clear()
        self._refresh_own_mids()
        await self._send_answer(negotiated, offer.id)

    async def _send_answer(self, negotiated: Negotiated, offer_id: int) -> None:
        placed = [s for s in negotiated.streams if s.mid is not None]
        room = self.host.room(self.room_id)
        if not await self.host.tracks_known(self.room_id, [s.track_id for s in placed], TRACKS_KNOWN_TIMEOUT):
            # The hub did not report them (yet): describe them from the relay's streams.
            codecs = section_codecs(negotiated.sdp)
            for stream in placed:
                if room.track_for_relay(stream.track_id) is None:
                    log.warning(
                        "participant %s: track %s of %s not reported by the hub; adopting it",
                        self.participant_id,
                        stream.track_id,
                        stream.publisher_id,
                    )
                    self.host.adopt_stream(self.room_id, stream, codecs.get(stream.mid or ""))
        self.sync()
        mid_to_track: dict[str, str] = {}
        msids: dict[str, tuple[str, str]] = {}
        for stream in placed:
            assert stream.mid is not None
            found = room.track_for_relay(stream.track_id)
            if found is None:
                continue
            publisher, track = found
            mid_to_track[stream.mid] = track.sid
            msids[stream.mid] = (f"{publisher}|{track.sid}", track.sid)
        answer = rtc.SessionDescription(
            type="answer",
            sdp=rewrite_msids(negotiated.sdp, msids),
            id=offer_id,
            mid_to_track_id=mid_to_track,
        )
        self._send(rtc.SignalResponse(answer=answer))

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        if not self._negotiated:
            self._early_candidates.append(trickle)  # before its first offer is applied
            return
        try:
            init = parse_candidate_init(trickle.candidateInit)
        except ValueError as exc:
            log.warning("participant %s: bad ICE candidate ignored: %s", self.participant_id, exc)
            return
        await self.host.hub.add_ice_candidate(
            self.participant_id, init.candidate, init.sdp_mid, init.sdp_mline_index
        )

    # ---- the client's own tracks ------------------------------------------------------------------

    def _on_add_track(self, request: rtc.AddTrackRequest) -> None:
        cid = request.cid
        if not cid or request.type not in (models.AUDIO, models.VIDEO):
            log.warning("participant %s: add_track without cid or media type ignored", self.participant_id)
            return
        if not self.claims.grants.can_publish:
            log.warning("participant %s may not publish: add_track ignored", self.participant_id)
            return
        room = self.host.room(self.room_id)
        described = TrackRecord(
            sid="",
            kind="audio" if request.type == models.AUDIO else "video",
            source=request.source,
            mime_type=requested_mime(request),
            name=request.name,
            mid=self._own.mids.get(cid, ""),
            muted=request.muted,
            width=request.width,
            height=request.height,
            encryption=request.encryption,
            stream=request.stream,
            stereo=request.stereo,
            disable_dtx=request.disable_dtx,
            disable_red=request.disable_red,
        )
        if cid in self._own.published:  # its offer was applied first: describe the published track
            sid = self._own.published[cid]
            mine = room.participants.get(self.participant_id)
            current = mine.tracks.get(sid) if mine is not None else None
            track = replace(
                described,
                sid=sid,
                mime_type=current.mime_type if current else described.mime_type,
                relay_track_id=current.relay_track_id if current else None,
            )
            room.update_track(self.participant_id, sid, **_fields(track))
            self.host.broadcast(self.room_id)
        else:
            previous = self._own.pending.get(cid)
            track = replace(described, sid=previous.sid if previous else new_track_sid())
            self._own.pending[cid] = track
        self._send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=cid, track=track.info()))
        )

    def claim_published(self, published: PublishedTrack) -> TrackRecord:
        """The record of a track the relay now publishes for this client (called by the component)."""
        cid = published.origin_track_id or ""
        described = self._own.pending.pop(cid, None)
        if described is None:
            record = record_for_published(published)
        else:
            record = replace(described, mime_type=published.codec or described.mime_type)
        record = replace(record, relay_track_id=published.track_id, mid=self._own.mids.get(cid, record.mid))
        if cid:
            self._own.published[cid] = record.sid
        return record

    def release_published(self, track: TrackRecord) -> None:
        for cid, sid in list(self._own.published.items()):
            if sid == track.sid:
                del self._own.published[cid]

    def _refresh_own_mids(self) -> None:
        room = self.host.room(self.room_id)
        changed = False
        for cid, sid in self._own.published.items():
            mid = self._own.mids.get(cid)
            if mid is not None and room.update_track(self.participant_id, sid, mid=mid) is not None:
                changed = True
        if changed:
            self.host.broadcast(self.room_id)

    def _on_mute(self, request: rtc.MuteTrackRequest) -> None:
        for cid, track in self._own.pending.items():
            if track.sid == request.sid:
                self._own.pending[cid] = replace(track, muted=request.muted)
                return
        if request.sid in self._own.published.values():
            self.host.room(self.room_id).update_track(self.participant_id, request.sid, muted=request.muted)
            self.host.broadcast(self.room_id)
        else:
            log.debug("participant %s: mute of unknown track %s ignored", self.participant_id, request.sid)

    def _on_update_metadata(self, request: rtc.UpdateParticipantMetadata) -> None:
        room = self.host.room(self.room_id)
        allowed = self.claims.grants.can_update_own_metadata
        if allowed:
            room.update_participant(
                self.participant_id,
                name=request.name or None,
                metadata=request.metadata or None,
                attributes=dict(request.attributes),
            )
            mine = room.participants.get(self.participant_id)
            if mine is not None:
                self._send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[mine.info()])))
            self.host.broadcast(self.room_id)
        reason = rtc.RequestResponse.OK if allowed else rtc.RequestResponse.NOT_ALLOWED
        self._send(
            rtc.SignalResponse(
                request_response=rtc.RequestResponse(request_id=request.request_id, reason=reason)
            )
        )

    # ---- ParticipantLink (called by the hub) ------------------------------------------------------

    async def send_offer(self, negotiated: Negotiated) -> None:
        """The relay never offers to this participant: ask it to re-offer, with more m-lines if needed."""
        if negotiated.sdp:
            log.warning(
                "participant %s: unexpected relay offer ignored (it always offers)", self.participant_id
            )
            return
        audios = sum(1 for s in negotiated.streams if s.mid is None and s.kind == "audio")
        videos = sum(1 for s in negotiated.streams if s.mid is None and s.kind == "video")
        self.sync()
        requirement = rtc.MediaSectionsRequirement(num_audios=audios, num_videos=videos)
        self._send(rtc.SignalResponse(media_sections_requirement=requirement))

    async def closed(self, reason: str) -> None:
        log.info("participant %s removed by the hub (%s)", self.participant_id, reason)
        self._removed = True
        self.close(reason)

    # ---- output -----------------------------------------------------------------------------------

    def sync(self) -> None:
        """Announce what changed in the room since this client was last told."""
        if not self._started or self._closing:
            return
        changes = self.host.room(self.room_id).changes_for(self._announced, exclude=self.participant_id)
        if changes:
            self._send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=changes)))

    def send_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self._send(rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers)))

    def shutdown(self) -> None:
        """The service stops: the hub keeps the participant for the restart; the client reconnects."""
        self._removed = True
        self.close(RemovalReason.SHUTDOWN)

    def close(self, reason: str) -> None:
        """Say goodbye (``leave``) and close the connection."""
        if self._closing:
            return
        self._send(leave_message(reason))
        self._closing = True
        self._stop_writer()

    def _send(self, message: rtc.SignalResponse) -> None:
        if self._closing:
            return
        if not self._started:
            self._deferred.append(message)
            return
        self._queue.put_nowait(message)

    async def _write_loop(self, ws: web.WebSocketResponse) -> None:
        try:
            while True:
                message = await self._queue.get()
                if message is None:
                    break
                if self._json:
                    await ws.send_str(json_format.MessageToJson(message))
                else:
                    await ws.send_bytes(message.SerializeToString())
        except (ConnectionError, RuntimeError) as exc:
            log.info("participant %s: connection lost while sending: %s", self.participant_id, exc)
        finally:
            await ws.close()

    async def _watchdog(self) -> None:
        timeout = self.host.settings.ping_timeout_s
        while not self._closing:
            await asyncio.sleep(1.0)
            if self.host.clock.now() - self._last_seen > timeout:
                log.info("participant %s: no message for %d s: closing", self.participant_id, timeout)
                self._closing = True
                self._stop_writer()
                return

    def _stop_writer(self) -> None:
        """The writer sends what is queued, then closes the connection (once)."""
        if not self._writer_stopping:
            self._writer_stopping = True
            self._queue.put_nowait(None)

    async def _finish(self) -> None:
        try:
            if not self._removed and self.participant_id:
                self._removed = True
                await self.host.hub.leave(self.participant_id, RemovalReason.LEFT)
            # Let the writer flush what is queued (a leave message) and close the socket, briefly.
            if self._writer is not None:
                await asyncio.wait([self._writer], timeout=WRITER_FLUSH_TIMEOUT)
        finally:
            await self._tasks.close()


def _fields(track: TrackRecord) -> Mapping[str, object]:
    return {name: getattr(track, name) for name in track.__dataclass_fields__ if name != "sid"}
