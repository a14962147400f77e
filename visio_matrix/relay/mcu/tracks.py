"""The MediaStreamTracks an MCU endpoint's RTCPeerConnection sends: frames pushed by the session.

The session pushes one frame per tick (the mix every 20 ms, the composite at the video rate); aiortc's
RTCRtpSender pulls them with `recv()` and encodes them. The buffer is small and bounded: if the
sender falls behind, the oldest frames are dropped (and counted) so that the endpoint stays live
and the session never waits for it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame


class SinkTrack(MediaStreamTrack):
    """A live track fed by `push()`; after `stop()`, `recv()` drains then raises MediaStreamError."""

    def __init__(self, kind: str, capacity: int = 3) -> None:
        super().__init__()
        self.kind = kind
        self._frames: deque[Frame] = deque()
        self._capacity = capacity
        self._ready = asyncio.Event()
        self._ended = False
        self.pushed = 0
        self.dropped = 0

    def push(self, frame: Frame) -> None:
        if self._ended:
            return
        if len(self._frames) >= self._capacity:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self.pushed += 1
        self._ready.set()

    def stop(self) -> None:
        self._ended = True
        self._ready.set()
        super().stop()

    async def recv(self) -> Frame:
        while not self._frames:
            if self._ended or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()
