"""A small LiveKit-protocol client in Python: WebSocket + protobuf messages + one aiortc peer
connection, behaving like livekit-client 2.23 on the v1 path (offer in the join request, data
channels and 3+3 recvonly m-lines in the first offer, add_track -> track_published -> re-offer,
media_sections_requirement -> add m-lines and re-offer).

Browsers put the data channel m-line first (livekit-client creates its data channels before its
media sections). aiortc cannot connect as an offerer when it creates its data channel first
(with max-bundle its SCTP transport is then dropped as a BUNDLE leftover), so this client creates
it after its media m-lines and sends its offers in the browser's order (application section and
its mid first, also in the BUNDLE group); answers are put back in its own order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from livekit.protocol import models, rtc

from visio_matrix.client.media import HEIGHT, WIDTH
from visio_matrix.focus.livekit_sdp import encode_join_request
from visio_matrix.relay import restrict_ice
from visio_matrix.relay.sdp_sections import SdpText, section_kind, section_mid


@dataclass
class Incoming:
    """A track received: who sent it according to the signaling, and what was decoded."""

    kind: str
    stream_id: str
    track_id: str
    mid: str | None
    frames: int = 0
    last_rgb: tuple[float, float, float] | None = None


@dataclass
class LkClient:
    name: str
    url: str
    token: str
    session: aiohttp.ClientSession
    messages: list[rtc.SignalResponse] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)

    def __post_init__(self) -> None:
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pc = restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])
        self.pc.on("track", self._on_track)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.join: rtc.JoinResponse | None = None
        self.participants: dict[str, models.ParticipantInfo] = {}  # by identity
        self.mid_to_track: dict[str, str] = {}
        self.answers: list[str] = []  # as the server sent them
        self._offer_id = 0
        self._answered = 0
        self._answers: dict[int, asyncio.Future[rtc.SessionDescription]] = {}
        self._published: dict[str, asyncio.Future[models.TrackInfo]] = {}
        self._negotiating = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- connecting -------------------------------------------------------------------------------

    async def connect(self, offer_with_join: bool = True, timeout: float = 5.0) -> rtc.JoinResponse:
        for kind in ("audio", "audio", "audio", "video", "video", "video"):
            self.pc.addTransceiver(kind, direction="recvonly")
        self.pc.createDataChannel("_reliable")
        self.pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        request = rtc.JoinRequest(
            client_info=models.ClientInfo(sdk=models.ClientInfo.JS, version="2.23.0", protocol=17),
            connection_settings=rtc.ConnectionSettings(auto_subscribe=True),
        )
        if offer_with_join:
            self._offer_id += 1
            await self.pc.setLocalDescription(await self.pc.createOffer())
            request.publisher_offer.CopyFrom(
                rtc.SessionDescription(
                    type="offer", sdp=browser_order(self.pc.localDescription.sdp), id=self._offer_id
                )
            )
            self._answers[self._offer_id] = asyncio.get_running_loop().create_future()
        query = {"access_token": self.token, "join_request": encode_join_request(request)}
        started = time.monotonic()
        self.ws = await self.session.ws_connect(self.url + "/rtc/v1", params=query)
        first = await asyncio.wait_for(self.ws.receive(), timeout)
        assert first.type == aiohttp.WSMsgType.BINARY, first
        response = rtc.SignalResponse.FromString(first.data)
        self.messages.append(response)
        assert response.WhichOneof("message") == "join", response
        self.join_delay = time.monotonic() - started
        self.join = response.join
        for info in self.join.other_participants:
            self.participants[info.identity] = info
        self._tasks.append(asyncio.get_running_loop().create_task(self._read()))
        if offer_with_join:
            answer = await asyncio.wait_for(self._answers[self._offer_id], timeout)
            await self._apply_answer(answer)
        else:
            await self.negotiate()
        return self.join

    async def send(self, request: rtc.SignalRequest) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(request.SerializeToString())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            response = rtc.SignalResponse.FromString(message.data)
            self.messages.append(response)
            kind = response.WhichOneof("message")
            if kind == "answer":
                future = self._answers.get(response.answer.id)
                if future is not None and not future.done():
                    future.set_result(response.answer)
            elif kind == "update":
                for info in response.update.participants:
                    known = self.participants.get(info.identity)
                    assert known is None or known.sid != info.sid or known.version <= info.version
                    if info.state == models.ParticipantInfo.DISCONNECTED:
                        self.participants.pop(info.identity, None)
                    else:
                        self.participants[info.identity] = info
            elif kind == "track_published":
                published = self._published.get(response.track_published.cid)
                if published is not None and not published.done():
                    published.set_result(response.track_published.track)
            elif kind == "media_sections_requirement":
                req = response.media_sections_requirement
                for _ in range(req.num_audios):
                    self.pc.addTransceiver("audio", direction="recvonly")
                for _ in range(req.num_videos):
                    self.pc.addTransceiver("video", direction="recvonly")
                self._tasks.append(asyncio.get_running_loop().create_task(self.negotiate()))

    def of(self, kind: str) -> list[rtc.SignalResponse]:
        return [m for m in self.messages if m.WhichOneof("message") == kind]

    # ---- negotiation ------------------------------------------------------------------------------

    async def negotiate(self) -> None:
        async with self._negotiating:
            self._offer_id += 1
            offer_id = self._offer_id
            future = self._answers[offer_id] = asyncio.get_running_loop().create_future()
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self.send(
                rtc.SignalRequest(
                    offer=rtc.SessionDescription(
                        type="offer", sdp=browser_order(self.pc.localDescription.sdp), id=offer_id
                    )
                )
            )
            await self._apply_answer(await asyncio.wait_for(future, 10))

    async def _apply_answer(self, answer: rtc.SessionDescription) -> None:
        self.mid_to_track.update(answer.mid_to_track_id)
        self._answered = answer.id
        self.answers.append(answer.sdp)
        local = self.pc.localDescription.sdp
        await self.pc.setRemoteDescription(RTCSessionDescription(same_order(answer.sdp, local), "answer"))

    async def publish(
        self, track: MediaStreamTrack, source: int, encryption: int = models.Encryption.NONE
    ) -> models.TrackInfo:
        cid = track.id
        future = self._published[cid] = asyncio.get_running_loop().create_future()
        is_video = track.kind == "video"
        await self.send(
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(
                    cid=cid,
                    name=f"{self.name}-{track.kind}",
                    type=models.VIDEO if is_video else models.AUDIO,
                    source=source,  # type: ignore[arg-type]
                    width=WIDTH if is_video else 0,
                    height=HEIGHT if is_video else 0,
                    encryption=encryption,  # type: ignore[arg-type]
                    simulcast_codecs=[rtc.SimulcastCodec(codec="vp8" if is_video else "opus", cid=cid)],
                )
            )
        )
        info = await asyncio.wait_for(future, 10)
        self.pc.addTransceiver(track, direction="sendonly")
        await self.negotiate()
        return info

    # ---- receiving --------------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        record = Incoming(track.kind, "", track.id, transceiver.mid)
        self.incoming.append(record)
        self._tasks.append(asyncio.get_running_loop().create_task(self._consume(track, record)))

    async def _consume(self, track: MediaStreamTrack, record: Incoming) -> None:
        try:
            while True:
                frame = await track.recv()
                record.frames += 1
                if isinstance(frame, VideoFrame) and record.frames % 5 == 1:
                    rgb = frame.to_ndarray(format="rgb24")
                    h, w = rgb.shape[:2]
                    center = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).mean(axis=0)
                    record.last_rgb = (float(center[0]), float(center[1]), float(center[2]))
        except MediaStreamError:
            return

    def receiving(self, publisher_sid: str, kind: str, min_frames: int = 5) -> list[Incoming]:
        for record in self.incoming:  # aiortc fires "track" before it sets the remote description
            if not record.stream_id and self.answers:
                record.stream_id = _msid_stream(self.answers[-1], record.mid)
        return [
            r
            for r in self.incoming
            if r.kind == kind and r.stream_id.startswith(publisher_sid + "|") and r.frames >= min_frames
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        await self.pc.close()


def _msid_stream(sdp: str, mid: str | None) -> str:
    current = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = None
        elif line.startswith("a=mid:"):
            current = line[6:].strip()
        elif line.startswith("a=msid:") and current == mid:
            return line[7:].split()[0]
    return ""


def browser_order(sdp: str) -> str:
    """``sdp`` with its application section first, as browsers (and livekit-client) write it."""
    text = SdpText.parse(sdp)
    app = [s for s in text.sections if section_kind(s) == "application"]
    media = [s for s in text.sections if section_kind(s) != "application"]
    return _ordered(text, app + media)


def same_order(sdp: str, reference: str) -> str:
    """``sdp``'s sections in the mid order of ``reference``."""
    text = SdpText.parse(sdp)
    by_mid = {section_mid(s): s for s in text.sections}
    order = [section_mid(s) for s in SdpText.parse(reference).sections]
    return _ordered(text, [by_mid[mid] for mid in order if mid in by_mid])


def _ordered(text: SdpText, sections: list[tuple[str, ...]]) -> str:
    mids = [section_mid(s) or "" for s in sections]
    session = [
        "a=group:BUNDLE " + " ".join(mids) if line.startswith("a=group:BUNDLE") else line
        for line in text.session
    ]
    return str(text.replace(sections, session))
