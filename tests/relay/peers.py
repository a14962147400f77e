"""Real aiortc test peers for the relay: recognisable media out (the tracks of
``visio_matrix.client.media``), decoded and measured media in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from visio_matrix.client.media import ColorVideoTrack, Received, ToneAudioTrack
from visio_matrix.relay import Conference, NegotiationNeeded, Relay, restrict_ice

__all__ = ["ColorVideoTrack", "Peer", "Received", "Signaling", "ToneAudioTrack", "record_frame"]


def record_frame(record: Received, frame: object, colour_every: int = 5) -> None:
    """Adds one decoded frame to ``record``: the mean colour of the picture's centre (of every
    ``colour_every``-th video frame), or the first channel of the audio (the last 50-100 frames)."""
    if record.first_frame_at is None:
        record.first_frame_at = time.monotonic()
    record.frames += 1
    if isinstance(frame, VideoFrame):
        if (record.frames - 1) % colour_every == 0:
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            center = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
            record.last_rgb = tuple(float(v) for v in center.reshape(-1, 3).mean(axis=0))  # type: ignore[assignment]
    elif isinstance(frame, AudioFrame):
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        mono = data.reshape(-1, channels)[:, 0] if data.ndim == 2 and data.shape[0] == 1 else data[0]
        record.audio.append(mono)
        record.audio_rate = frame.sample_rate
        if len(record.audio) > 100:
            del record.audio[:50]


class Peer:
    """One participant: an aiortc peer connection on 127.0.0.1 sending colour + tone."""

    def __init__(
        self, name: str, rgb: tuple[int, int, int] | None, tone: float | None, video_codec: str | None = None
    ) -> None:
        self.name = name
        self.video_codec = video_codec  # e.g. "video/H264": the only video codec this peer offers
        # max-bundle: aiortc's default ("balanced") loses the second m-line of a kind in a first
        # offer with several (see docs/relay.md); browsers bundle everything anyway.
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pc = restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])
        self.video = ColorVideoTrack(rgb) if rgb is not None else None
        self.audio = ToneAudioTrack(tone) if tone is not None else None
        self.received: dict[str, Received] = {}  # msid track id -> what arrived
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self.read = True

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.received[track.id] = Received(track.kind)
        self._readers.append(asyncio.get_running_loop().create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        record = self.received[track.id]
        try:
            while True:
                record_frame(record, await track.recv())
        except MediaStreamError:
            return

    def add_tracks(self) -> None:
        if self.audio is not None:
            self.pc.addTrack(self.audio)
        if self.video is not None:
            sender = self.pc.addTrack(self.video)
            if self.video_codec is not None:
                transceiver = next(t for t in self.pc.getTransceivers() if t.sender is sender)
                caps = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences([c for c in caps if c.mimeType == self.video_codec])

    async def offer(self) -> str:
        self.add_tracks()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self.pc.close()


class Signaling:
    """Plays the call logic: answers the relay's renegotiation offers on behalf of the peers."""

    def __init__(self, relay: Relay, conference: Conference) -> None:
        self.relay = relay
        self.conference = conference
        self.peers: dict[str, Peer] = {}
        self.events: list[object] = []
        self._task = asyncio.get_running_loop().create_task(self._pump())
        self._changed = asyncio.Event()

    async def join(self, peer: Peer) -> None:
        """The participant offers, the relay answers."""
        self.peers[peer.name] = peer
        negotiated = await self.conference.add_participant(peer.name, offer_sdp=await peer.offer())
        await peer.accept(negotiated.sdp)

    async def join_relay_offers(self, peer: Peer) -> None:
        """The relay offers (MSC3898 style), the participant answers with its media."""
        self.peers[peer.name] = peer
        negotiated = await self.conference.add_participant(peer.name)
        peer.add_tracks()
        await self.conference.accept_answer(peer.name, await peer.answer(negotiated.sdp))

    async def _pump(self) -> None:
        while True:
            event = await self.relay.events.get()
            self.events.append(event)
            if isinstance(event, NegotiationNeeded) and event.participant_id in self.peers:
                peer = self.peers[event.participant_id]
                answer = await peer.answer(event.offer_sdp)
                await self.conference.accept_answer(event.participant_id, answer)
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(min(0.05, remaining))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for peer in self.peers.values():
            await peer.close()
