"""`McuSession`: the MCU path of one conference (decode once, mix and compose, one stream per sink).

    publishers' RTP --feed()--> DecodeWorker thread --> per source: SampleFifo / latest Picture
                                                              |
    audio task, every 20 ms: sum of all sources once; each sink gets sum - own --> sink audio track
    video task, every 1/fps: one composite per distinct set of visible sources --> sink video tracks

Sinks are endpoints that take a single audio and a single video stream; the relay adds their two
tracks to the endpoint's RTCPeerConnection and aiortc encodes them. An endpoint is also a source
when it publishes under the same id: it then neither hears itself nor sees its own tile.

Levels from `levels()` are in dBov (0 is full scale, -127 is silence); `levels.to_rfc6464` converts
them for the relay's active-speaker detector (`relay.speaker`), which this package does not duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import av
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from ...clock import Clock, SystemClock
from .compositor import Compositor
from .decoder import DecodeWorker, RtpItem, SourcePipeline
from .levels import SILENCE_DBOV, LevelMeter, dbov
from .mixer import FRAME_SAMPLES, SAMPLE_RATE, Samples, mix
from .ticks import next_deadline
from .tracks import SinkTrack

logger = logging.getLogger(__name__)

AUDIO_PERIOD = FRAME_SAMPLES / SAMPLE_RATE  # 20 ms
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


@dataclass(frozen=True)
class McuStats:
    """Counters of one session since it started."""

    packets_in: int
    packets_ignored: int  # unknown source, wrong payload type, not an RTP packet
    packets_dropped: int  # decode queue full
    bad_packets: int  # payload the depayloader rejected
    late_packets: int  # audio packets arriving after a later one (or duplicates): dropped
    decode_errors: int
    frames_decoded: Mapping[str, int]  # "source_id/kind" -> decoded frames
    keyframe_requests: int
    audio_ticks: int
    video_ticks: int
    composites: int  # composite pictures built (one per distinct visible set per video tick)
    tiles_scaled: int
    sink_frames_dropped: int


@dataclass(frozen=True)
class _Sink:
    audio: SinkTrack
    video: SinkTrack


class McuSession:
    """Mixes audio and composes video for the single-stream endpoints of one conference."""

    def __init__(
        self,
        request_keyframe: Callable[[str], None],
        clock: Clock | None = None,
        *,
        width: int = 640,
        height: int = 360,
        fps: float = 15.0,
        keyframe_interval: float = 0.5,
    ) -> None:
        self._request_keyframe = request_keyframe
        self._clock: Clock = clock or SystemClock()
        self._video_period = 1.0 / fps
        self._video_pts_step = round(VIDEO_CLOCK_RATE / fps)
        self._keyframe_interval = keyframe_interval
        self._compositor = Compositor(width, height)
        self._worker = DecodeWorker(self._keyframe_needed, self._clock.now)
        self._pipelines: dict[tuple[str, str], SourcePipeline] = {}
        self._meters: dict[str, LevelMeter] = {}
        self._sinks: dict[str, _Sink] = {}
        self._last_keyframe_request: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._packets_in = 0
        self._packets_ignored = 0
        self._keyframe_requests = 0
        self._audio_ticks = 0
        self._video_ticks = 0
        self._retired_dropped = 0

    # -- sources ---------------------------------------------------------------------------------

    def add_source(self, source_id: str, kind: str, codec: RTCRtpCodecParameters) -> None:
        """Start decoding `source_id`'s `kind` stream; ValueError for a codec aiortc cannot decode."""
        self._check_open()
        pipeline = SourcePipeline(source_id, kind, codec)
        old = self._pipelines.pop((source_id, kind), None)
        if old is not None:
            old.closed = True
            if kind == "video":
                self._compositor.forget(source_id)  # the new pipeline numbers its pictures from 0
        self._pipelines[(source_id, kind)] = pipeline
        if kind == "audio":
            self._meters.setdefault(source_id, LevelMeter())
        self._update_wanted()
        self._ensure_started()

    def feed(self, source_id: str, kind: str, packet: RtpPacket) -> None:
        """Queue one received RTP packet (RTX already unwrapped); never blocks, never raises.

        Packets whose payload type differs from the source codec's (when it has one) are ignored."""
        self._packets_in += 1
        pipeline = self._pipelines.get((source_id, kind))
        try:
            expected_pt = pipeline.codec.payloadType if pipeline is not None else None
            if pipeline is None or self._closed or expected_pt not in (None, packet.payload_type):
                self._packets_ignored += 1
                return
            item = RtpItem(packet.sequence_number, packet.timestamp, bytes(packet.payload))
        except (AttributeError, TypeError):
            self._packets_ignored += 1
            return
        if not self._worker.running:
            self._ensure_started()
        self._worker.submit(pipeline, item)

    def remove_source(self, source_id: str, kind: str | None = None) -> None:
        for k in ("audio", "video") if kind is None else (kind,):
            pipeline = self._pipelines.pop((source_id, k), None)
            if pipeline is None:
                continue
            pipeline.closed = True
            if k == "audio":
                self._meters.pop(source_id, None)
            else:
                self._compositor.forget(source_id)
                self._last_keyframe_request.pop(source_id, None)
        self._update_wanted()

    # -- sinks -----------------------------------------------------------------------------------

    def add_sink(self, endpoint_id: str) -> tuple[MediaStreamTrack, MediaStreamTrack]:
        """The (audio, video) tracks to send to `endpoint_id`; the same tracks if called again."""
        self._check_open()
        sink = self._sinks.get(endpoint_id)
        if sink is None:
            sink = _Sink(audio=SinkTrack("audio"), video=SinkTrack("video"))
            self._sinks[endpoint_id] = sink
            self._update_wanted()
        self._ensure_started()
        return sink.audio, sink.video

    def remove_sink(self, endpoint_id: str) -> None:
        sink = self._sinks.pop(endpoint_id, None)
        if sink is None:
            return
        self._retired_dropped += sink.audio.dropped + sink.video.dropped
        sink.audio.stop()
        sink.video.stop()
        self._update_wanted()

    # -- observation -----------------------------------------------------------------------------

    def levels(self) -> dict[str, float]:
        """Recent audio level per audio source, in dBov (0 = full scale, -127 = silence)."""
        return {source_id: meter.level for source_id, meter in self._meters.items()}

    def stats(self) -> McuStats:
        pipelines = list(self._pipelines.values())
        sinks = list(self._sinks.values())
        return McuStats(
            packets_in=self._packets_in,
            packets_ignored=self._packets_ignored,
            packets_dropped=self._worker.dropped,
            bad_packets=sum(p.bad_packets for p in pipelines),
            late_packets=sum(p.late_packets for p in pipelines),
            decode_errors=sum(p.decode_errors for p in pipelines) + self._worker.errors,
            frames_decoded={f"{p.source_id}/{p.kind}": p.frames_decoded for p in pipelines},
            keyframe_requests=self._keyframe_requests,
            audio_ticks=self._audio_ticks,
            video_ticks=self._video_ticks,
            composites=self._compositor.composed,
            tiles_scaled=self._compositor.scaled,
            sink_frames_dropped=self._retired_dropped + sum(s.audio.dropped + s.video.dropped for s in sinks),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the tasks and the decoder thread, end every sink track. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for pipeline in self._pipelines.values():
            pipeline.closed = True
        if self._worker.running:
            self._worker.stop()
            await asyncio.to_thread(self._worker.join)
        for endpoint_id in list(self._sinks):
            self.remove_sink(endpoint_id)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("McuSession is closed")

    def _ensure_started(self) -> None:
        if self._tasks or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the first call made from the event loop
        self._worker.start(loop)
        self._tasks = [
            loop.create_task(self._run_periodic(AUDIO_PERIOD, self._audio_tick), name="mcu-audio"),
            loop.create_task(self._run_periodic(self._video_period, self._video_tick), name="mcu-video"),
        ]

    async def _run_periodic(self, period: float, tick: Callable[[], None]) -> None:
        # Scheduled on the event loop's own clock (the one asyncio.sleep uses), so that an injected
        # test clock cannot stretch or freeze the media cadence; media timestamps count ticks.
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                tick()
            except Exception:  # one bad tick must not end the mix for everyone
                logger.exception("mcu: %s failed", tick.__name__)
            deadline = next_deadline(deadline, period, loop.time())
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    # -- keyframes -------------------------------------------------------------------------------

    def _keyframe_needed(self, source_id: str) -> None:
        """From the decoder: `source_id` needs a keyframe. At most one request per interval."""
        if self._closed or (source_id, "video") not in self._pipelines:
            return
        now = self._clock.now()
        last = self._last_keyframe_request.get(source_id)
        if last is not None and now - last < self._keyframe_interval:
            return
        self._last_keyframe_request[source_id] = now
        self._keyframe_requests += 1
        try:
            self._request_keyframe(source_id)
        except Exception:
            logger.exception("mcu: keyframe request for %s failed", source_id)

    def _update_wanted(self) -> None:
        """Decode a video source only while some sink other than itself is there to see it."""
        for (source_id, kind), pipeline in self._pipelines.items():
            if kind == "video":
                pipeline.wanted = any(sink_id != source_id for sink_id in self._sinks)

    # -- ticks -----------------------------------------------------------------------------------

    def _audio_tick(self) -> None:
        contributions: dict[str, Samples] = {}
        for (source_id, kind), pipeline in self._pipelines.items():
            if kind != "audio":
                continue
            samples = pipeline.fifo.pop(FRAME_SAMPLES)
            meter = self._meters.setdefault(source_id, LevelMeter())
            meter.update(dbov(samples) if samples is not None else SILENCE_DBOV)
            if samples is not None:
                contributions[source_id] = samples
        pts = self._audio_ticks * FRAME_SAMPLES
        self._audio_ticks += 1
        if not self._sinks:
            return
        result = mix(contributions)
        shared: av.AudioFrame | None = None  # what every sink that is not a source hears
        for sink_id, sink in self._sinks.items():
            if sink_id in contributions:
                sink.audio.push(_audio_frame(result.for_sink(sink_id), pts))
            else:
                if shared is None:
                    shared = _audio_frame(result.for_sink(sink_id), pts)
                sink.audio.push(shared)

    def _video_tick(self) -> None:
        pts = self._video_ticks * self._video_pts_step
        self._video_ticks += 1
        if not self._sinks:
            return
        order = [source_id for (source_id, kind) in self._pipelines if kind == "video"]
        groups: dict[tuple[str, ...], list[_Sink]] = {}
        for sink_id, sink in self._sinks.items():
            visible = tuple(source_id for source_id in order if source_id != sink_id)
            groups.setdefault(visible, []).append(sink)
        for visible, members in groups.items():
            frame = self._compositor.compose(
                [(source_id, self._pipelines[(source_id, "video")].picture) for source_id in visible]
            )
            frame.pts = pts
            frame.time_base = VIDEO_TIME_BASE
            for sink in members:
                sink.video.push(frame)


def _audio_frame(samples: Samples, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = AUDIO_TIME_BASE
    return frame
