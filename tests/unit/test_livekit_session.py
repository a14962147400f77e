"""One LiveKit session's message handling, with an in-memory hub and WebSocket (no media)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import pytest
from aiohttp import WSMessage, WSMsgType
from livekit.protocol import models, rtc

from visio_matrix.calls.hub_api import HubError, RemovalReason
from visio_matrix.clock import FakeClock
from visio_matrix.focus.jwt import TokenClaims, VideoGrants, VisioClaim
from visio_matrix.focus.livekit_room import ParticipantRecord, RoomState, TrackRecord
from visio_matrix.focus.livekit_session import LiveKitSession, SessionSettings, leave_message
from visio_matrix.relay.api import Negotiated, PublishedTrack, StreamInfo
from visio_matrix.tasks import TaskOwner

ROOM, PID = "!r:hs", "PA_me"
ANSWER_SDP = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=msid:relay-stream relay-track\r\n"


class FakeHub:
    def __init__(self) -> None:
        self.offers: list[str] = []
        self.candidates: list[tuple[str | None, str | None, int | None]] = []
        self.left: list[tuple[str, str]] = []
        self.negotiated = Negotiated(ANSWER_SDP, ())
        self.refuse: HubError | None = None

    async def apply_offer(
        self, participant_id: str, offer_sdp: str, stream_purposes: Mapping[str, str] | None = None
    ) -> Negotiated:
        if self.refuse is not None:
            raise self.refuse
        self.offers.append(offer_sdp)
        return self.negotiated

    async def add_ice_candidate(
        self,
        participant_id: str,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        self.candidates.append((candidate, sdp_mid, sdp_mline_index))

    async def leave(self, participant_id: str, reason: str = RemovalReason.LEFT) -> None:
        self.left.append((participant_id, reason))


class FakeHost:
    def __init__(self) -> None:
        self.hub = FakeHub()
        self.clock = FakeClock()
        self.settings = SessionSettings(ping_interval_s=5, ping_timeout_s=15)
        self.rooms: dict[str, RoomState] = {}
        self.broadcasts = 0
        self.ended: list[LiveKitSession] = []
        self.tasks = TaskOwner("test-host")

    def room(self, room_id: str) -> RoomState:
        return self.rooms.setdefault(room_id, RoomState(room_id))

    def broadcast(self, room_id: str) -> None:
        self.broadcasts += 1

    async def tracks_known(self, room_id: str, relay_track_ids: list[str], timeout: float) -> bool:
        return True

    def adopt_stream(self, room_id: str, stream: StreamInfo, mime_type: str | None) -> None:
        raise AssertionError("not expected")

    def session_ended(self, session: LiveKitSession) -> None:
        self.ended.append(session)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any] | None:
        return self.tasks.spawn(coro, name)


class FakeWs:
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[WSMessage | None] = asyncio.Queue()
        self.sent: list[rtc.SignalResponse] = []
        self.closed = False
        self.changed = asyncio.Event()

    def __aiter__(self) -> FakeWs:
        return self

    async def __anext__(self) -> WSMessage:
        message = await self.incoming.get()
        if message is None:
            raise StopAsyncIteration
        return message

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(rtc.SignalResponse.FromString(data))
        self.changed.set()

    async def close(self) -> None:
        self.closed = True
        self.incoming.put_nowait(None)

    def exception(self) -> None:
        return None

    def push(self, request: rtc.SignalRequest | bytes) -> None:
        data = request if isinstance(request, bytes) else request.SerializeToString()
        self.incoming.put_nowait(WSMessage(WSMsgType.BINARY, data, None))

    def of(self, kind: str) -> list[rtc.SignalResponse]:
        return [m for m in self.sent if m.WhichOneof("message") == kind]

    async def wait(self, kind: str, count: int = 1) -> list[rtc.SignalResponse]:
        async with asyncio.timeout(5):
            while len(self.of(kind)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.of(kind)


def claims(can_publish: bool = True) -> TokenClaims:
    return TokenClaims(
        issuer="key",
        identity="@me:hs:DEV",
        not_before=0,
        expires_at=2**31,
        grants=VideoGrants(room="lk-room", can_publish=can_publish),
        visio=VisioClaim("@me:hs", "DEV", ROOM, "m.call#ROOM", True),
    )


class Running:
    def __init__(self, host: FakeHost, session: LiveKitSession, ws: FakeWs, task: asyncio.Task[None]) -> None:
        self.host, self.session, self.ws, self.task = host, session, ws, task


async def start(can_publish: bool = True) -> Running:
    host = FakeHost()
    host.room(ROOM).add_participant(ParticipantRecord(PID, "@me:hs:DEV", "me", 0))
    session = LiveKitSession(host, claims(can_publish), ROOM)
    session.attach(PID, "conf-1")
    session.start(None, 0, None)
    ws = FakeWs()
    task = asyncio.get_running_loop().create_task(session.run(ws))  # type: ignore[arg-type]
    await ws.wait("join")
    return Running(host, session, ws, task)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = await start()
    yield r
    await r.ws.close()
    await asyncio.wait_for(r.task, 5)
    await r.host.tasks.close()


async def test_join_response_comes_first(running: Running) -> None:
    join = running.ws.sent[0].join
    assert join.participant.sid == PID and join.participant.identity == "@me:hs:DEV"
    assert join.server_version and join.ping_interval == 5 and join.ping_timeout == 15
    assert join.room.name == "lk-room" and join.room.sid.startswith("RM_")


async def test_pings_are_answered(running: Running) -> None:
    running.ws.push(rtc.SignalRequest(ping=123))
    running.ws.push(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=456, rtt=3)))
    pong_resp = (await running.ws.wait("pong_resp"))[0].pong_resp
    assert pong_resp.last_ping_timestamp == 456 and pong_resp.timestamp == running.host.clock.wall_ms()
    assert running.ws.of("pong")[0].pong == running.host.clock.wall_ms()


async def test_garbage_and_unknown_requests_are_logged_and_ignored(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="visio_matrix.focus.livekit_session")
    running.ws.push(b"\xff\xff\xff\xff not protobuf")
    running.ws.push(rtc.SignalRequest())
    running.ws.push(rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=["TR_x"])))
    running.ws.push(rtc.SignalRequest(ping=1))
    await running.ws.wait("pong")
    assert [m.WhichOneof("message") for m in running.ws.sent] == ["join", "pong"]
    text = caplog.text
    assert "unreadable signal message ignored" in text
    assert "unknown signal request None ignored" in text and "track_setting ignored" in text
    assert not running.ws.closed


async def test_add_track_is_answered_and_the_publication_keeps_its_description(running: Running) -> None:
    request = rtc.AddTrackRequest(
        cid="cid-1",
        name="camera",
        type=models.VIDEO,
        source=models.CAMERA,
        width=640,
        height=480,
        encryption=models.Encryption.GCM,
        simulcast_codecs=[rtc.SimulcastCodec(codec="vp9", cid="cid-1")],  # not forwarded: VP8 instead
    )
    running.ws.push(rtc.SignalRequest(add_track=request))
    running.ws.push(rtc.SignalRequest(add_track=request))  # a retry gets the same track
    answers = await running.ws.wait("track_published", 2)
    first, second = (m.track_published for m in answers)
    assert first.cid == "cid-1" and first.track.sid.startswith("TR_") and first.track.sid == second.track.sid
    assert first.track.mime_type == "video/VP8" and first.track.encryption == models.Encryption.GCM
    assert (first.track.width, first.track.height, first.track.source) == (640, 480, models.CAMERA)

    running.ws.push(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=first.track.sid, muted=True)))
    running.ws.push(rtc.SignalRequest(ping=1))
    await running.ws.wait("pong")
    relay_track = PublishedTrack(PID, "relay-1", "s", "video", "video/VP8", "m.usermedia", "stream", "cid-1")
    record = running.session.claim_published(relay_track)
    assert record.sid == first.track.sid and record.muted and record.relay_track_id == "relay-1"
    assert record.encryption == models.Encryption.GCM


async def test_add_track_refused_without_publish_grant() -> None:
    r = await start(can_publish=False)
    try:
        r.ws.push(rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c", type=models.AUDIO)))
        r.ws.push(rtc.SignalRequest(ping=1))
        await r.ws.wait("pong")
        assert r.ws.of("track_published") == []
    finally:
        await r.ws.close()
        await asyncio.wait_for(r.task, 5)
        await r.host.tasks.close()


async def test_offer_answer_with_id_echo_track_ids_and_early_candidates(running: Running) -> None:
    room = running.host.room(ROOM)
    room.add_participant(ParticipantRecord("PA_other", "@o:hs:O", "o", 0))
    room.add_track(
        "PA_other", TrackRecord("TR_o", "video", models.CAMERA, "video/VP8", relay_track_id="relay-track")
    )
    stream = StreamInfo("relay-stream", "relay-track", "4", "video", "m.usermedia", "PA_other", "x")
    running.host.hub.negotiated = Negotiated(ANSWER_SDP, (stream,))
    candidate = '{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}'
    running.ws.push(rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=candidate)))
    running.ws.push(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="v=0 offer", id=7)))
    answer = (await running.ws.wait("answer"))[0].answer
    assert answer.id == 7 and answer.type == "answer" and dict(answer.mid_to_track_id) == {"4": "TR_o"}
    assert "a=msid:PA_other|TR_o TR_o" in answer.sdp
    assert running.host.hub.offers == ["v=0 offer"]
    # The candidate that came before the first offer was held back, then given to the hub.
    assert running.host.hub.candidates == [("candidate:1 1 udp 1 127.0.0.1 9 typ host", "0", 0)]
    # The others were announced before the answer.
    kinds = [m.WhichOneof("message") for m in running.ws.sent]
    assert kinds.index("update") < kinds.index("answer")


async def test_refused_offer_keeps_the_session(running: Running) -> None:
    running.host.hub.refuse = HubError("bad_sdp", "no")
    running.ws.push(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="v=0", id=2)))
    running.ws.push(rtc.SignalRequest(ping=1))
    await running.ws.wait("pong")
    assert running.ws.of("answer") == [] and not running.ws.closed


async def test_relay_changes_become_media_sections_requirements(running: Running) -> None:
    def stream(kind: str, mid: str | None) -> StreamInfo:
        return StreamInfo("s", f"t-{kind}-{mid}", mid, kind, "m.usermedia", "PA_o", "x")  # type: ignore[arg-type]

    streams = (stream("audio", "1"), stream("audio", None), stream("video", None), stream("video", None))
    await running.session.send_offer(Negotiated("", streams))
    await running.session.send_offer(Negotiated("v=0 unexpected relay offer", ()))
    requirement = (await running.ws.wait("media_sections_requirement"))[0].media_sections_requirement
    assert (requirement.num_audios, requirement.num_videos) == (1, 2)
    running.ws.push(rtc.SignalRequest(ping=1))
    await running.ws.wait("pong")
    assert len(running.ws.of("media_sections_requirement")) == 1


async def test_leave_from_the_client_leaves_the_hub(running: Running) -> None:
    running.ws.push(rtc.SignalRequest(leave=rtc.LeaveRequest(action=rtc.LeaveRequest.DISCONNECT)))
    await asyncio.wait_for(running.task, 5)
    assert running.host.hub.left == [(PID, RemovalReason.LEFT)]
    assert running.ws.closed and running.host.ended == [running.session]


async def test_removed_by_the_hub_gets_leave_and_no_hub_leave(running: Running) -> None:
    await running.session.closed(RemovalReason.REPLACED)
    await asyncio.wait_for(running.task, 5)
    leave = running.ws.of("leave")[0].leave
    assert leave.reason == models.DUPLICATE_IDENTITY and leave.action == rtc.LeaveRequest.DISCONNECT
    assert running.host.hub.left == [] and running.ws.closed


async def test_connection_drop_leaves_the_hub(running: Running) -> None:
    running.ws.incoming.put_nowait(None)
    await asyncio.wait_for(running.task, 5)
    assert running.host.hub.left == [(PID, RemovalReason.LEFT)]


async def test_silence_past_the_ping_timeout_closes(running: Running) -> None:
    running.host.clock.advance(16)
    await asyncio.wait_for(running.task, 5)
    assert running.ws.closed and running.host.hub.left == [(PID, RemovalReason.LEFT)]


def test_leave_messages_per_removal_reason() -> None:
    failed = leave_message(RemovalReason.MEDIA_FAILED).leave
    assert failed.action == rtc.LeaveRequest.RECONNECT and failed.can_reconnect
    ended = leave_message(RemovalReason.CONFERENCE_ENDED).leave
    assert ended.action == rtc.LeaveRequest.DISCONNECT and ended.reason == models.ROOM_CLOSED
    kicked = leave_message(RemovalReason.NOT_A_MEMBER).leave
    assert kicked.reason == models.PARTICIPANT_REMOVED
