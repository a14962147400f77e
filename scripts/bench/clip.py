"""Pre-encoded media for publishers: a short VP8 + Opus clip encoded once, replayed in a loop.

Publishers must cost little CPU (the machine has 2 cores, shared with the relay under test), so each
publisher encodes its own few-second clip at start-up and then only replays the packets: aiortc's
``RTCRtpSender`` re-packetizes ``av.Packet``s without encoding. Each publisher's clip is seeded
differently so payloads (hence the bench's packet identities) differ between publishers.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


@dataclass(frozen=True)
class ClipSpec:
    """What each publisher sends: 640x360@30 VP8 at ``video_kbps`` and 20 ms Opus frames."""

    width: int = 640
    height: int = 360
    fps: int = 30
    seconds: float = 4.0
    video_kbps: int = 600
    audio_kbps: int = 32


@dataclass(frozen=True)
class EncodedClip:
    """Encoded frames of one clip; video frame 0 is the only keyframe."""

    video: tuple[bytes, ...]
    audio: tuple[bytes, ...]
    fps: int


def encode_clip(spec: ClipSpec, seed: int) -> EncodedClip:
    """Encode a moving, noisy picture (so the encoder really spends its bitrate) and a noisy tone."""
    rng = np.random.default_rng(seed)
    n_frames = int(spec.seconds * spec.fps)
    enc = av.CodecContext.create("libvpx", "w")
    enc.width = spec.width
    enc.height = spec.height
    enc.pix_fmt = "yuv420p"
    enc.bit_rate = spec.video_kbps * 1000
    enc.time_base = fractions.Fraction(1, spec.fps)
    enc.framerate = fractions.Fraction(spec.fps, 1)
    enc.gop_size = 100000  # one keyframe at the start, like aiortc's encoder (kf_max_dist 3000)
    enc.qmin = 2
    enc.qmax = 56
    enc.options = {
        "deadline": "realtime",
        "cpu-used": "-6",
        "lag-in-frames": "0",
        "minrate": str(enc.bit_rate),
        "maxrate": str(enc.bit_rate),
        "bufsize": str(enc.bit_rate),
        "undershoot-pct": "100",
        "overshoot-pct": "15",
    }
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w]
    base_y = ((xx + yy) % 256).astype(np.int16)
    video: list[bytes] = []
    for i in range(n_frames):
        y = (base_y + 4 * i + rng.integers(-1, 2, size=(h, w))) % 256
        u = np.full((h // 2, w // 2), (seed * 37) % 256, dtype=np.uint8)
        v = np.full((h // 2, w // 2), (seed * 91 + 4 * i) % 256, dtype=np.uint8)
        yuv = np.concatenate([y.astype(np.uint8), u.reshape(h // 4, w), v.reshape(h // 4, w)])
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        frame.time_base = enc.time_base
        video.extend(bytes(p) for p in enc.encode(frame))
    video.extend(bytes(p) for p in enc.encode(None))

    aenc = av.CodecContext.create("libopus", "w")
    aenc.sample_rate = AUDIO_RATE
    aenc.layout = "stereo"
    aenc.format = "s16"
    aenc.bit_rate = spec.audio_kbps * 1000
    aenc.time_base = fractions.Fraction(1, AUDIO_RATE)
    n_audio = int(spec.seconds * AUDIO_RATE / AUDIO_SAMPLES)
    freq = 300.0 + 23.7 * (seed % 40)
    audio: list[bytes] = []
    for i in range(n_audio):
        t = (np.arange(AUDIO_SAMPLES) + i * AUDIO_SAMPLES) / AUDIO_RATE
        mono = 6000 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 300, AUDIO_SAMPLES)
        stereo = np.repeat(mono.astype(np.int16), 2).reshape(1, -1)
        aframe = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        aframe.sample_rate = AUDIO_RATE
        aframe.pts = i * AUDIO_SAMPLES
        aframe.time_base = fractions.Fraction(1, AUDIO_RATE)
        audio.extend(bytes(p) for p in aenc.encode(aframe))
    return EncodedClip(video=tuple(video[:n_frames]), audio=tuple(audio), fps=spec.fps)


class EncodedClipTrack(MediaStreamTrack):
    """Replays encoded frames in real time as ``av.Packet``s; a keyframe request restarts the loop.

    Wire ``request_keyframe`` to the sender's ``_send_keyframe`` (aiortc ignores keyframe requests for
    pre-encoded packets otherwise). Like an encoder, several requests within one frame give one keyframe.
    """

    def __init__(self, kind: str, frames: tuple[bytes, ...], fps: int) -> None:
        super().__init__()
        self.kind = kind
        self._frames = frames
        if kind == "video":
            self._ptime = 1.0 / fps
            self._step = VIDEO_CLOCK // fps
            self._time_base = fractions.Fraction(1, VIDEO_CLOCK)
        else:
            self._ptime = AUDIO_SAMPLES / AUDIO_RATE
            self._step = AUDIO_SAMPLES
            self._time_base = fractions.Fraction(1, AUDIO_RATE)
        self._start: float | None = None
        self._n = 0
        self._index = 0
        self._keyframe_requested = False
        self.keyframes_sent = 0

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._n += 1
        wait = self._start + self._n * self._ptime - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._keyframe_requested:
            self._keyframe_requested = False
            self._index = 0
        if self._index == 0 and self.kind == "video":
            self.keyframes_sent += 1
        packet = av.Packet(self._frames[self._index])
        self._index = (self._index + 1) % len(self._frames)
        packet.pts = self._n * self._step
        packet.time_base = self._time_base
        return packet
