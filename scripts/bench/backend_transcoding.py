"""Baseline backend: aiortc's stock ``MediaRelay`` (decode once per publisher, encode per subscriber).

This is what an aiortc application gets without an SFU: the publisher's receiver decodes every
frame, ``MediaRelay`` hands the decoded frames to per-subscriber proxy tracks (unbounded queues), and
each subscriber's ``RTCRtpSender`` encodes them again (VP8 and Opus).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack


class TranscodingBackend:
    def __init__(self) -> None:
        self._relay = MediaRelay()
        self._tracks: dict[int, dict[str, MediaStreamTrack]] = {}
        self._pcs: dict[str, RTCPeerConnection] = {}

    async def publish(self, peer: int, sdp: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pcs[f"pub{peer}"] = pc
        tracks: dict[str, MediaStreamTrack] = {}
        self._tracks[peer] = tracks

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks[track.kind] = track

        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def subscribe(self, peer: int, feeds: list[int]) -> str | None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pcs[f"sub{peer}"] = pc
        for feed in feeds:
            for kind in ("audio", "video"):
                pc.addTransceiver(self._relay.subscribe(self._tracks[feed][kind]), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def answer(self, peer: int, sdp: str) -> str | None:
        await self._pcs[f"sub{peer}"].setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        return None

    async def join(self, peer: int, sdp: str | None) -> dict[str, str]:
        raise NotImplementedError("the transcoding backend uses /publish and /subscribe")

    async def poll(self, peer: int) -> str | None:
        raise NotImplementedError("the transcoding backend uses /publish and /subscribe")

    def stats(self) -> dict[str, Any]:
        return {"peer_connections": len(self._pcs)}

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self._pcs.values()), return_exceptions=True)
        self._pcs.clear()
