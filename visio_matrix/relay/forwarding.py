"""The SFU forwarding path: up tracks (from publishers), down tracks and per-subscriber writers.

::

    publisher DTLS-SRTP --decrypted RtpPacket--> UpTrack.on_packet (sync, on the reader's turn)
        for each DownTrack: rewrite SSRC/PT/seq/ts, put_nowait on the subscriber's bounded queue
    SubscriberWriter task (one per subscriber): serialize, SRTP-protect, send; keep a history

The publisher's reader never awaits a subscriber: a full queue drops the packet (video: up to the
next keyframe, and a keyframe is requested). Every drop is counted on the subscriber.
Payload bytes are never touched, so end-to-end encrypted media passes unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx

from ..clock import Clock
from ..tasks import TaskOwner
from . import aiortc_hooks as hooks
from .api import PublishedTrack, StreamInfo
from .history import RtpHistory
from .keyframe import KeyframeThrottle, is_keyframe_start
from .rewrite import SequenceRewriter, TimestampRewriter

logger = logging.getLogger(__name__)


@dataclass
class Counters:
    """Mutable per-participant counters (snapshotted into ``api.ParticipantStats``)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: int = 0
    keyframe_requests_received: int = 0
    keyframe_requests_forwarded: int = 0
    nacks_received: int = 0
    retransmissions: int = 0


class UpTrack:
    """One track a publisher sends; fans its packets out to down tracks (and the MCU)."""

    def __init__(
        self,
        info: PublishedTrack,
        receiver: RTCRtpReceiver,
        codec: RTCRtpCodecParameters,
        counters: Counters,
        clock: Clock,
        tasks: TaskOwner,
        keyframe_min_interval: float,
    ) -> None:
        self.info = info
        self.receiver = receiver
        self.codec = codec
        self.downs: list[DownTrack] = []
        self.on_audio_level: Callable[[int], None] | None = None
        self.mcu_feed: Callable[[RtpPacket], None] | None = None
        self._counters = counters
        self._clock = clock
        self._tasks = tasks
        self._throttle = KeyframeThrottle(keyframe_min_interval)
        self._media_ssrc: int | None = None
        self._video = info.kind == "video"

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        self._counters.packets_in += 1
        self._counters.bytes_in += len(packet.payload)
        self._media_ssrc = packet.ssrc
        keyframe = self._video and is_keyframe_start(codec.mimeType, packet.payload)
        if keyframe:
            self._throttle.keyframe_seen()
        elif not self._video and self.on_audio_level is not None:
            level = packet.extensions.audio_level
            if level is not None:
                self.on_audio_level(level[1])
        if self.mcu_feed is not None:
            self.mcu_feed(packet)
        for down in self.downs:
            down.offer(packet, keyframe)

    def request_keyframe(self) -> None:
        if not self._video:
            return
        decision = self._throttle.request(self._clock.now())
        if decision.action == "send":
            self._send_pli()
        elif decision.action == "defer" and decision.retry_at is not None:
            self._tasks.call_later(max(0.0, decision.retry_at - self._clock.now()), self._fire)

    def _fire(self) -> None:
        if self._throttle.fire(self._clock.now()):
            self._send_pli()

    def _send_pli(self) -> None:
        if self._media_ssrc is None:
            return  # nothing received yet: the first packets will start with a keyframe
        self._counters.keyframe_requests_forwarded += 1
        self._tasks.spawn(hooks.request_keyframe(self.receiver, self._media_ssrc), "pli")


class DownTrack:
    """One up track as one subscriber receives it: its own SSRC, PT, sequence and timestamps."""

    def __init__(
        self, up: UpTrack, writer: SubscriberWriter, sender: RTCRtpSender, info: StreamInfo, history_size: int
    ) -> None:
        self.up = up
        self.info = info
        self.sender = sender
        self._writer = writer
        self._counters = writer.counters
        self._seq = SequenceRewriter(random.randint(0, 0x7FFF))
        self._ts = TimestampRewriter(random.getrandbits(32))
        self.history: RtpHistory[RtpPacket] = RtpHistory(history_size)
        self._video = up.info.kind == "video"
        self._waiting_keyframe = self._video
        self._started = False
        self._pt = 0
        self._rtx_pt: int | None = None
        self._ssrc, self._rtx_ssrc = hooks.sender_ssrcs(sender)
        self._rtx_seq = random.randint(0, 0x7FFF)
        self._mid: str | None = None
        self.extensions = HeaderExtensionsMap()

    def start(self, parameters: RTCRtpSendParameters) -> None:
        """Called once the subscriber negotiated this stream (aiortc started the sender)."""
        codec = parameters.codecs[0]
        self._pt = codec.payloadType or 0
        for c in parameters.codecs:
            if is_rtx(c) and c.parameters.get("apt") == codec.payloadType:
                self._rtx_pt = c.payloadType
        self._mid = parameters.muxId
        self.extensions.configure(parameters)
        self._started = True
        if self._video:
            self.up.request_keyframe()  # a late joiner needs one to start decoding

    def offer(self, packet: RtpPacket, keyframe: bool) -> None:
        """A packet from the publisher: rewrite and queue it, or drop it (never blocks)."""
        if not self._started:
            return
        if self._waiting_keyframe:
            if not keyframe:
                self._drop(packet.sequence_number)
                return
            self._waiting_keyframe = False
        if self._writer.full():
            self._drop(packet.sequence_number)
            if self._video:
                self._waiting_keyframe = True
                self.up.request_keyframe()
            return
        seq = self._seq.rewrite(packet.sequence_number)
        if seq is None:
            self._counters.drops += 1
            return
        out = RtpPacket(
            payload_type=self._pt,
            marker=packet.marker,
            sequence_number=seq,
            timestamp=self._ts.rewrite(packet.timestamp),
            ssrc=self._ssrc,
            payload=packet.payload,
        )
        out.extensions.mid = self._mid
        out.extensions.audio_level = packet.extensions.audio_level
        self._writer.put(self, out, True)

    def on_feedback(self, kind: str, lost: list[int]) -> None:
        """NACK or PLI/FIR from the subscriber."""
        if kind == "pli":
            self._counters.keyframe_requests_received += 1
            self.up.request_keyframe()
            return
        self._counters.nacks_received += len(lost)
        for seq in lost:
            packet = self.history.get(seq)
            if packet is None or self._writer.full():
                continue
            if self._rtx_pt is not None:
                packet = wrap_rtx(
                    packet, payload_type=self._rtx_pt, sequence_number=self._rtx_seq, ssrc=self._rtx_ssrc
                )
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            self._counters.retransmissions += 1
            self._writer.put(self, packet, False)

    def _drop(self, seq: int) -> None:
        self._counters.drops += 1
        self._seq.drop(seq)


class SubscriberWriter:
    """The bounded queue and the task writing one subscriber's packets to its transport."""

    def __init__(self, counters: Counters, queue_size: int, tasks: TaskOwner, name: str) -> None:
        self.counters = counters
        self._queue: asyncio.Queue[tuple[DownTrack, RtpPacket, bool]] = asyncio.Queue(queue_size)
        self._task = tasks.spawn(self._run(), f"writer:{name}")

    def full(self) -> bool:
        return self._queue.full()

    def put(self, down: DownTrack, packet: RtpPacket, keep: bool) -> None:
        self._queue.put_nowait((down, packet, keep))

    async def _run(self) -> None:
        while True:
            down, packet, keep = await self._queue.get()
            data = packet.serialize(down.extensions)
            try:
                await hooks.send_rtp(down.sender, data)
            except ConnectionError:
                self.counters.drops += 1
                continue
            if keep:
                down.history.put(packet.sequence_number, packet)
                hooks.record_sent(down.sender, packet.timestamp, len(packet.payload), current_ntp_time())
            self.counters.packets_out += 1
            self.counters.bytes_out += len(packet.payload)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
