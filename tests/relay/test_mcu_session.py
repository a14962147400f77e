"""McuSession with real encoded media: Opus tones and VP8 solid colours from aiortc's own encoders,
packetized into RtpPacket and fed in real time; the sink tracks' output is checked by content
(audio spectrum, tile colours)."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import math
import os
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from visio_matrix.clock import SystemClock
from visio_matrix.relay.mcu import McuSession, to_rfc6464
from visio_matrix.relay.mcu.decoder import RtpItem, SourcePipeline
from visio_matrix.relay.mcu.layout import grid
from visio_matrix.relay.speaker import ActiveSpeakerDetector

pytestmark = pytest.mark.media

OPUS_PT, VP8_PT = 111, 96
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=OPUS_PT)
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=VP8_PT)
TONES = {"a": 500.0, "b": 1100.0, "c": 1700.0}
COLOURS = {"a": (210, 40, 40), "b": (40, 190, 40), "c": (40, 40, 210)}


class ToneSender:
    """20 ms Opus packets of a sine tone."""

    def __init__(self, freq: float, amplitude: float = 6000.0) -> None:
        self.freq = freq
        self.amplitude = amplitude
        self.encoder = get_encoder(OPUS)
        self.seq = random.randint(0, 65535)
        self.n = 0
        self.ssrc = random.getrandbits(32)

    def packets(self) -> list[RtpPacket]:
        t = (np.arange(960) + self.n * 960) / 48000
        samples = (self.amplitude * np.sin(2 * math.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.n * 960, fractions.Fraction(1, 48000)
        self.n += 1
        payloads, timestamp = self.encoder.encode(frame)
        out = []
        for payload in payloads:
            out.append(RtpPacket(OPUS_PT, 1, self.seq, timestamp, self.ssrc, payload))
            self.seq = (self.seq + 1) % 65536
        return out


class ColourSender:
    """VP8 frames of one solid colour; a keyframe when asked (like a real publisher on PLI)."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        self.frame = av.VideoFrame.from_ndarray(
            np.full((180, 320, 3), rgb, np.uint8), format="rgb24"
        ).reformat(format="yuv420p")
        self.encoder = get_encoder(VP8)
        self.seq = random.randint(0, 65535)
        self.n = 0
        self.ssrc = random.getrandbits(32)
        self.keyframe_wanted = False

    def packets(self) -> list[RtpPacket]:
        self.frame.pts, self.frame.time_base = self.n * 6000, fractions.Fraction(1, 90000)
        self.n += 1
        payloads, timestamp = self.encoder.encode(self.frame, force_keyframe=self.keyframe_wanted)
        self.keyframe_wanted = False
        out = []
        for i, payload in enumerate(payloads):
            marker = int(i == len(payloads) - 1)
            out.append(RtpPacket(VP8_PT, marker, self.seq, timestamp, self.ssrc, payload))
            self.seq = (self.seq + 1) % 65536
        return out


@dataclass
class Rig:
    """Sources fed in real time into one McuSession, and what its sinks received."""

    mcu: McuSession
    tones: dict[str, ToneSender] = field(default_factory=dict)
    colours: dict[str, ColourSender] = field(default_factory=dict)
    keyframe_requests: list[str] = field(default_factory=list)
    fed: dict[str, int] = field(default_factory=dict)
    hook: Callable[[str, RtpPacket], RtpPacket | None] | None = None
    mcu_clock: SystemClock = field(default_factory=SystemClock)

    def on_keyframe(self, source_id: str) -> None:
        self.keyframe_requests.append(source_id)
        if source_id in self.colours:
            self.colours[source_id].keyframe_wanted = True

    def add(self, source_id: str, audio: bool = True, video: bool = True) -> None:
        if audio:
            self.tones[source_id] = ToneSender(TONES[source_id])
            self.mcu.add_source(source_id, "audio", OPUS)
        if video:
            self.colours[source_id] = ColourSender(COLOURS[source_id])
            self.mcu.add_source(source_id, "video", VP8)

    async def feed(self, seconds: float) -> None:
        """One audio packet per source every 20 ms, a video frame every 80 ms (12.5 fps)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tick in range(int(seconds / 0.02)):
            due: list[tuple[str, str, ToneSender | ColourSender]] = [
                (source_id, "audio", sender) for source_id, sender in self.tones.items()
            ]
            if tick % 4 == 0:
                due += [(source_id, "video", sender) for source_id, sender in self.colours.items()]
            for source_id, kind, sender in due:
                for packet in sender.packets():
                    maybe = self.hook(source_id, packet) if self.hook else packet
                    if maybe is not None:
                        self.mcu.feed(source_id, kind, maybe)
                        key = f"{source_id}/{kind}"
                        self.fed[key] = self.fed.get(key, 0) + 1
            await asyncio.sleep(max(0.0, start + (tick + 1) * 0.02 - loop.time()))


async def make_rig() -> Rig:
    clock = SystemClock()
    rig = Rig(mcu=McuSession(lambda s: rig.on_keyframe(s), clock), mcu_clock=clock)
    return rig


class Recorder:
    """Reads a sink track continuously and keeps what it got."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames: list[Any] = []  # AudioFrame or VideoFrame, as the track's kind
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self.frames.append(await self.track.recv())
        except MediaStreamError:
            pass

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def audio(self, skip_s: float = 0.0) -> np.ndarray:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in self.frames])
        return samples[int(skip_s * 48000) :].astype(np.float64)


def band_energy(samples: np.ndarray, freq: float, half_width: float = 25.0) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / 48000)
    return float(spectrum[(freqs > freq - half_width) & (freqs < freq + half_width)].sum())


def tile_colours(frame: av.VideoFrame, count: int) -> list[np.ndarray]:
    rgb = frame.to_ndarray(format="rgb24")
    out = []
    for cell in grid(count, frame.width, frame.height):
        cx, cy = cell.x + cell.width // 2, cell.y + cell.height // 2
        out.append(rgb[cy - 8 : cy + 8, cx - 8 : cx + 8].reshape(-1, 3).mean(axis=0))
    return out


def near(colour: np.ndarray, rgb: tuple[int, int, int], tolerance: float = 40.0) -> bool:
    return bool(np.all(np.abs(colour - np.array(rgb)) < tolerance))


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def run_with(rig: Rig, seconds: float, *extra: Awaitable[None]) -> None:
    await asyncio.gather(rig.feed(seconds), *extra)


# -- content ------------------------------------------------------------------------------------


async def test_sink_hears_the_others_tones_and_not_its_own() -> None:
    rig = await make_rig()
    try:
        for source_id in TONES:
            rig.add(source_id, video=False)
        audio_a, _ = rig.mcu.add_sink("a")
        audio_listener, _ = rig.mcu.add_sink("listener")
        rec_a, rec_l = Recorder(audio_a), Recorder(audio_listener)
        await rig.feed(1.6)
        await rec_a.stop()
        await rec_l.stop()
        heard_a, heard_l = rec_a.audio(skip_s=0.4), rec_l.audio(skip_s=0.4)
        assert len(heard_a) >= 0.6 * 48000, "sink a got less than 0.6 s of audio"
        a = {sid: band_energy(heard_a, f) for sid, f in TONES.items()}
        listener = {sid: band_energy(heard_l, f) for sid, f in TONES.items()}
        assert a["b"] > 30 * a["a"] and a["c"] > 30 * a["a"], a
        assert min(listener.values()) > 0.3 * max(listener.values()), listener
        levels = rig.mcu.levels()
        assert set(levels) == set(TONES)
        # 6000-amplitude sines: about -17.7 dBov RMS.
        assert all(-25.0 < level < -12.0 for level in levels.values()), levels
    finally:
        await rig.mcu.close()


async def test_composite_shows_the_others_tiles_and_not_its_own() -> None:
    rig = await make_rig()
    try:
        for source_id in COLOURS:
            rig.add(source_id, audio=False)
        _, video_a = rig.mcu.add_sink("a")
        rec = Recorder(video_a)
        await rig.feed(1.2)
        await rec.stop()
        last = rec.frames[-1]
        assert (last.width, last.height) == (640, 360)
        tiles = tile_colours(last, 2)
        assert near(tiles[0], COLOURS["b"]) and near(tiles[1], COLOURS["c"]), tiles
        rgb = last.to_ndarray(format="rgb24").reshape(-1, 3).astype(int)
        own = np.all(np.abs(rgb - np.array(COLOURS["a"])) < 40, axis=1).mean()
        assert own == 0.0, f"{own:.1%} of the composite has sink a's own colour"
        pts = [f.pts for f in rec.frames]
        assert all(b > a for a, b in itertools.pairwise(pts)), "composite pts not increasing"
        assert 10 <= len(rec.frames) <= 25, len(rec.frames)  # ~15 fps over 1.2 s
    finally:
        await rig.mcu.close()


async def test_levels_drive_the_relays_active_speaker_detector() -> None:
    rig = await make_rig()
    detector = ActiveSpeakerDetector()
    speakers: list[str | None] = []
    try:
        rig.add("a", video=False)
        rig.add("b", video=False)
        rig.tones["b"].amplitude = 100.0

        async def poll(seconds: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                await asyncio.sleep(0.05)
                now = rig.mcu_clock.now()
                for source_id, level in rig.mcu.levels().items():
                    detector.observe(source_id, to_rfc6464(level), now)
                detector.evaluate(now)
                speakers.append(detector.speaker)

        await run_with(rig, 1.0, poll(1.0))
        assert detector.speaker == "a"
        levels = rig.mcu.levels()
        assert levels["a"] > levels["b"] + 25, levels  # 6000 vs 100: 35.6 dB apart
        rig.tones["a"].amplitude, rig.tones["b"].amplitude = 100.0, 6000.0
        await run_with(rig, 2.0, poll(2.0))
        assert detector.speaker == "b", speakers
    finally:
        await rig.mcu.close()


async def test_a_stalled_source_keeps_its_last_picture_and_the_others_stay_live() -> None:
    rig = await make_rig()
    try:
        rig.add("a", audio=False)
        rig.add("b", audio=False)
        _, video = rig.mcu.add_sink("x")
        rec = Recorder(video)
        await rig.feed(0.6)
        stalled = rig.colours.pop("b")  # b stops sending; a goes on
        before = rig.mcu.stats().frames_decoded["b/video"]
        await rig.feed(0.8)
        await rec.stop()
        assert rig.mcu.stats().frames_decoded["b/video"] == before and stalled.n > 0
        tiles = tile_colours(rec.frames[-1], 2)
        assert near(tiles[0], COLOURS["a"]) and near(tiles[1], COLOURS["b"]), tiles
        pts = [f.pts for f in rec.frames]
        assert all(b > a for a, b in itertools.pairwise(pts))
    finally:
        await rig.mcu.close()


# -- sharing ------------------------------------------------------------------------------------


async def test_work_is_shared_between_sinks() -> None:
    rig = await make_rig()
    try:
        for source_id in ("a", "b"):
            rig.add(source_id)
        recorders = {}
        for sink_id in ("l1", "l2", "a"):  # l1, l2: same visible set {a, b}; a sees {b}
            audio, video = rig.mcu.add_sink(sink_id)
            recorders[sink_id] = (Recorder(audio), Recorder(video))
        await rig.feed(1.0)
        for rec_audio, rec_video in recorders.values():
            await rec_audio.stop()
            await rec_video.stop()
        stats = rig.mcu.stats()
        # Two distinct visible sets: two composites per video tick, not three.
        assert stats.composites == 2 * stats.video_ticks
        # Each source is decoded once, however many sinks (3) see it.
        await wait_for(lambda: rig.mcu.stats().frames_decoded["a/audio"] >= rig.fed["a/audio"] - 1)
        decoded = rig.mcu.stats().frames_decoded
        assert decoded["a/audio"] <= rig.fed["a/audio"]
        assert 0 < decoded["b/video"] <= rig.fed["b/video"]  # video packets >= frames
        # l1 and l2 received the very same composite and audio frame objects; a its own ones.
        video_l1 = {f.pts: f for f in recorders["l1"][1].frames}
        shared = [f for f in recorders["l2"][1].frames if video_l1.get(f.pts) is f]
        assert len(shared) >= len(recorders["l2"][1].frames) - 3
        assert not any(video_l1.get(f.pts) is f for f in recorders["a"][1].frames)
        audio_l1 = {id(f) for f in recorders["l1"][0].frames}
        assert sum(id(f) in audio_l1 for f in recorders["l2"][0].frames) >= len(recorders["l2"][0].frames) - 3
    finally:
        await rig.mcu.close()


# -- keyframes ----------------------------------------------------------------------------------


async def test_missing_keyframe_is_requested_throttled_and_recovers() -> None:
    rig = await make_rig()
    try:
        rig.add("b", audio=False)
        dropped_first = False

        def drop_first_keyframe(source_id: str, packet: RtpPacket) -> RtpPacket | None:
            nonlocal dropped_first
            if rig.colours[source_id].n == 1:  # every packet of the first (key)frame is lost
                dropped_first = True
                return None
            return packet

        rig.hook = drop_first_keyframe
        _, video = rig.mcu.add_sink("a")
        rec = Recorder(video)
        # The sender honours requests only from the next frame on: the MCU must ask, then decode.
        await rig.feed(1.0)
        await rec.stop()
        assert dropped_first and rig.keyframe_requests[:1] == ["b"]
        # Throttled: at most one request per 0.5 s, though every delta frame lacked a keyframe.
        assert len(rig.keyframe_requests) <= 3
        assert near(tile_colours(rec.frames[-1], 1)[0], COLOURS["b"])
    finally:
        await rig.mcu.close()


def test_audio_pipeline_drops_late_and_duplicate_packets_but_follows_a_restart() -> None:
    pipeline = SourcePipeline("a", "audio", OPUS)
    sender = ToneSender(500.0)
    first, second = sender.packets()[0], sender.packets()[0]

    def process(packet: RtpPacket, seq: int) -> None:
        pipeline.process(RtpItem(seq, packet.timestamp, packet.payload), 0.0)

    process(first, 1000)
    process(second, 1001)
    process(second, 1001)  # duplicate
    process(first, 1000)  # late
    assert (pipeline.frames_decoded, pipeline.late_packets) == (2, 2)
    process(first, 200)  # 800 behind: the sender restarted its sequence
    process(second, 201)
    assert (pipeline.frames_decoded, pipeline.late_packets) == (4, 2)
    assert len(pipeline.fifo) == 4 * 960


# -- bad input ----------------------------------------------------------------------------------


async def test_bad_input_never_raises_and_the_mix_continues() -> None:
    rig = await make_rig()
    try:
        for source_id in TONES:
            rig.add(source_id)
        # The sink is c, whose packets are corrupted: its own garbage (Opus decodes random bytes into
        # noise) is subtracted from what it hears, so the tones of a and b can be checked exactly.
        audio, video = rig.mcu.add_sink("c")
        rec_audio, rec_video = Recorder(audio), Recorder(video)

        def corrupt(source_id: str, packet: RtpPacket) -> RtpPacket | None:
            if source_id == "c" and random.random() < 0.5:
                packet.payload = os.urandom(random.randint(0, 300))
            return packet

        rig.hook = corrupt
        rig.mcu.feed("nobody", "audio", rig.tones["a"].packets()[0])  # unknown source
        rig.mcu.feed("a", "audio", object())  # type: ignore[arg-type]  # not a packet
        rig.mcu.feed("a", "audio", RtpPacket(payload_type=5, payload=b"x"))  # wrong payload type

        async def remove_b_midway() -> None:
            await asyncio.sleep(0.8)
            rig.mcu.remove_source("b")
            del rig.tones["b"], rig.colours["b"]
            rig.mcu.remove_source("b")  # twice: harmless
            rig.mcu.remove_sink("nobody")

        await run_with(rig, 2.0, remove_b_midway())
        await rec_audio.stop()
        await rec_video.stop()
        stats = rig.mcu.stats()
        assert stats.packets_ignored >= 3
        assert stats.bad_packets + stats.decode_errors > 0
        tail = rec_audio.audio()[-int(0.6 * 48000) :]
        # b is gone, a is still mixed.
        assert band_energy(tail, TONES["a"]) > 1000 * band_energy(tail, TONES["b"])
        last = rec_video.frames[-1]
        tiles = tile_colours(last, 1)  # b's tile is gone: only a's remains
        assert near(tiles[0], COLOURS["a"]), tiles
        assert "b" not in rig.mcu.levels()
    finally:
        await rig.mcu.close()


async def test_unsupported_codec_is_a_clear_error_and_close_is_idempotent() -> None:
    mcu = McuSession(lambda s: None, SystemClock())
    with pytest.raises(ValueError, match="No decoder"):
        mcu.add_source(
            "a", "video", RTCRtpCodecParameters(mimeType="video/AV1", clockRate=90000, payloadType=45)
        )
    with pytest.raises(ValueError, match="given for a video source"):
        mcu.add_source("a", "video", OPUS)
    audio, video = mcu.add_sink("x")
    await mcu.close()
    await mcu.close()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(audio.recv(), 1.0)
    assert video.readyState == "ended"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mcu-")]
    assert not [t for t in threading.enumerate() if t.name == "mcu-decoder"]
    with pytest.raises(RuntimeError, match="closed"):
        mcu.add_sink("y")
