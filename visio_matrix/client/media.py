"""Recognisable media for demos, tests and benchmarks: a solid-colour video and a sine tone out,
and a probe that decodes a remote track and says what it received (frames, colour, pitch, timing).

Each participant sends its own colour and frequency, so a receiver can tell *whose* media arrived,
not only that some did.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from visio_matrix.tasks import TaskOwner

WIDTH, HEIGHT, FPS = 96, 64, 15
SAMPLE_RATE, AUDIO_PTIME = 48000, 0.02


class ColorVideoTrack(MediaStreamTrack):
    """Frames of one solid colour, paced at ``fps``."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int], fps: int = FPS) -> None:
        super().__init__()
        image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        image[:, :] = rgb
        self._yuv = VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray()
        self._fps = fps
        self._start: float | None = None
        self.count = 0

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count / self._fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = int(self.count * 90000 / self._fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone, 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self._frequency = frequency
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._count * AUDIO_PTIME - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = int(SAMPLE_RATE * AUDIO_PTIME)
        t = (np.arange(samples) + self._count * samples) / SAMPLE_RATE
        wave = (0.3 * 32767 * np.sin(2 * np.pi * self._frequency * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._count * samples
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._count += 1
        return frame


@dataclass
class Received:
    """What a probe decoded from one remote track so far."""

    kind: str
    frames: int = 0
    first_frame_at: float | None = None  # time.monotonic()
    last_rgb: tuple[float, float, float] | None = None
    audio: list[np.ndarray] = field(default_factory=list)
    audio_rate: int = SAMPLE_RATE
    got_frame: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def dominant_frequency(self) -> float:
        """The strongest frequency of the last second of audio (0.0 before any)."""
        if not self.audio:
            return 0.0
        samples = np.concatenate(self.audio[-50:]).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        freqs = np.fft.rfftfreq(len(samples), 1 / self.audio_rate)
        return float(freqs[int(np.argmax(spectrum[1:])) + 1])

    def colour_close_to(self, rgb: tuple[int, int, int], tolerance: float = 40.0) -> bool:
        if self.last_rgb is None:
            return False
        return all(abs(a - b) <= tolerance for a, b in zip(self.last_rgb, rgb, strict=True))


class MediaProbe:
    """Decodes remote tracks in owned tasks and records a ``Received`` for each."""

    def __init__(self) -> None:
        self._tasks = TaskOwner("media-probe")

    def watch(self, track: MediaStreamTrack) -> Received:
        received = Received(track.kind)
        self._tasks.spawn(self._consume(track, received), f"probe-{track.kind}")
        return received

    async def close(self) -> None:
        await self._tasks.close()

    @staticmethod
    async def _consume(track: MediaStreamTrack, received: Received) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if received.first_frame_at is None:
                received.first_frame_at = time.monotonic()
                received.got_frame.set()
            received.frames += 1
            if isinstance(frame, VideoFrame):
                if received.frames % 5 == 1:
                    rgb = frame.to_ndarray(format="rgb24")
                    received.last_rgb = tuple(float(v) for v in rgb.reshape(-1, 3).mean(axis=0))  # type: ignore[assignment]
            elif isinstance(frame, AudioFrame):
                received.audio_rate = frame.sample_rate
                pcm = frame.to_ndarray()
                if frame.layout.nb_channels > 1 and pcm.shape[0] == 1:
                    pcm = pcm.reshape(-1, frame.layout.nb_channels)[:, 0]
                received.audio.append(pcm.reshape(-1).copy())
                del received.audio[:-100]
