"""Decoding of one publisher's stream, and the thread that decodes every source of a session.

`SourcePipeline` turns RTP packets of one (source, kind) into decoded media with aiortc's
depayloaders and decoders (`aiortc.codecs`). Video frames are reassembled by aiortc's JitterBuffer;
audio packets are whole frames, decoded on arrival (late or duplicate packets are dropped: waiting
for reordering would add a packet time of latency, and the mixer's FIFO already absorbs jitter).
Audio lands in a `SampleFifo` (mono s16 48 kHz, whatever the codec's rate); video keeps only the
latest picture.
VP8 is gated on keyframes: until a keyframe arrives (at start, after loss or a decode error) frames
are skipped and the pipeline asks for a keyframe instead of feeding garbage to the decoder.

`DecodeWorker` owns one thread per session: `feed()` on the event loop only enqueues, so the SFU's
receive path never waits on a decoder. Each source is decoded once, however many sinks see it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import av
import numpy as np
from aiortc.codecs import depayload, get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .mixer import SAMPLE_RATE, SampleFifo

logger = logging.getLogger(__name__)

MAX_MISORDER = 100  # as aiortc's JitterBuffer: a sequence number further back resets the stream


@dataclass(frozen=True)
class Picture:
    """The latest decoded picture of a video source; `seq` increases with every new picture."""

    seq: int
    frame: av.VideoFrame
    decoded_at: float


class RtpItem(NamedTuple):
    """The fields of an RTP packet the MCU needs (copied at feed time: the caller may reuse packets).

    A NamedTuple rather than a frozen dataclass: one is built per received packet on the caller's
    path, and tuple construction is several times cheaper."""

    sequence_number: int
    timestamp: int
    payload: bytes


class SourcePipeline:
    """Jitter buffer + depayloader + decoder of one (source, kind). Used from the worker thread only,
    except the outputs (`fifo`, `picture`) and the flags, which are safe to read from the loop."""

    def __init__(self, source_id: str, kind: str, codec: RTCRtpCodecParameters) -> None:
        if kind not in ("audio", "video"):
            raise ValueError(f"unknown media kind {kind!r}")
        if codec.mimeType.split("/")[0].lower() != kind:
            raise ValueError(f"codec {codec.mimeType} given for a {kind} source")
        self.source_id = source_id
        self.kind = kind
        self.codec = codec
        self.decoder = get_decoder(codec)  # ValueError for codecs aiortc cannot decode
        self.is_vp8 = codec.name.upper() == "VP8"
        self.jitter = JitterBuffer(capacity=128, is_video=True)
        self.last_audio_seq: int | None = None
        self.late_packets = 0
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.fifo = SampleFifo()
        self.picture: Picture | None = None
        self.closed = False
        # Set from the loop: decode video only while some sink sees this source.
        self.wanted = kind == "audio"
        self.have_keyframe = False
        self.frames_decoded = 0
        self.decode_errors = 0
        self.bad_packets = 0

    def process(self, item: RtpItem, now: float) -> bool:
        """Handle one packet; True when a keyframe should be requested from the publisher."""
        try:
            data = depayload(self.codec, item.payload) if item.payload else b""
        except ValueError:
            self.bad_packets += 1
            return False
        need_keyframe = False
        if self.kind == "audio":
            if not data:
                return False
            last = self.last_audio_seq
            behind = (last - item.sequence_number) % 65536 if last is not None else MAX_MISORDER
            if behind < MAX_MISORDER:  # a duplicate or a late packet; further back means a restart
                self.late_packets += 1
                return False
            self.last_audio_seq = item.sequence_number
            frame: JitterFrame | None = JitterFrame(data, item.timestamp)
        else:
            packet = RtpPacket(sequence_number=item.sequence_number, timestamp=item.timestamp)
            packet._data = data  # type: ignore[attr-defined]  # what JitterBuffer reassembles
            lost, frame = self.jitter.add(packet)
            if lost:
                self.have_keyframe = False
                need_keyframe = True
        if frame is None:
            return need_keyframe
        if self.kind == "video":
            if not self.wanted:
                self.have_keyframe = False  # resume on a keyframe once someone looks again
                return False
            if self.is_vp8:
                # VP8 frame tag: bit 0 of the first byte is 0 on a keyframe (RFC 6386 section 9.1).
                if len(frame.data) >= 3 and not frame.data[0] & 1:
                    self.have_keyframe = True
                elif not self.have_keyframe:
                    return True
        try:
            decoded = self.decoder.decode(frame)
        except (av.FFmpegError, ValueError) as exc:
            self.decode_errors += 1
            logger.debug("mcu: %s %s decode failed: %s", self.source_id, self.kind, exc)
            self.have_keyframe = False
            return self.kind == "video"
        for out in decoded:
            self.frames_decoded += 1
            if isinstance(out, av.AudioFrame):
                for mono in self.resampler.resample(out):
                    self.fifo.push(mono.to_ndarray().reshape(-1).astype(np.int16))
            elif isinstance(out, av.VideoFrame):
                seq = self.picture.seq + 1 if self.picture else 0
                self.picture = Picture(seq=seq, frame=out, decoded_at=now)
        return need_keyframe


class DecodeWorker:
    """One thread decoding the queued packets of every source of a session, in arrival order.

    The queue is bounded: when decoding falls behind, new packets are dropped and counted (video then
    recovers through the keyframe gate). `on_keyframe_needed` is called on the event loop. The queue
    is a `SimpleQueue` (C, lock-free put) with the bound checked on `qsize()`: `submit` sits on the
    SFU's receive path and `queue.Queue` costs several microseconds per packet.
    """

    def __init__(
        self,
        on_keyframe_needed: Callable[[str], None],
        now: Callable[[], float],
        capacity: int = 2000,
    ) -> None:
        self._on_keyframe_needed = on_keyframe_needed
        self._now = now
        self._queue: queue.SimpleQueue[tuple[SourcePipeline, RtpItem] | None] = queue.SimpleQueue()
        self._capacity = capacity
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        self.errors = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="mcu-decoder", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def submit(self, pipeline: SourcePipeline, item: RtpItem) -> bool:
        if self._queue.qsize() >= self._capacity:
            self.dropped += 1
            return False
        self._queue.put_nowait((pipeline, item))
        return True

    def stop(self) -> None:
        """Ask the thread to finish (queued packets are discarded); join with `join()`."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(None)

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            task = self._queue.get()
            if task is None:
                return
            pipeline, item = task
            if pipeline.closed:
                continue
            try:
                want_keyframe = pipeline.process(item, self._now())
            except Exception:  # a decoder bug must not kill the mix of everyone else
                self.errors += 1
                logger.exception("mcu: decoding %s %s failed", pipeline.source_id, pipeline.kind)
                continue
            if want_keyframe and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._on_keyframe_needed, pipeline.source_id)
                except RuntimeError:  # loop closed in between
                    return
