"""The SFU forwarding path: up tracks (from publishers), down tracks and per-subscriber writers.

::

    publisher DTLS-SRTP --decrypted RtpPacket--> UpTrack.on_packet (sync, on the reader's turn)
        for each DownTrack: rewrite SSRC/PT/seq/ts into a header built from a cached template,
        SRTP-protect and sendto on the subscriber's ICE pair (no await), keep the bytes for NACKs

Nothing here awaits: the publisher's reader never waits for a subscriber. Each subscriber's bounded
queue is its datagram transport's write buffer; above ``SubscriberWriter.max_backlog`` the packet is
dropped (video: up to the next keyframe, and a keyframe is requested). Every drop is counted on the
subscriber. Payload bytes are never touched, so end-to-end encrypted media passes unchanged.
See docs/performance.md ("Where the time goes") for what each step costs.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, RtpPacket

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
        first = self._media_ssrc is None
        self._media_ssrc = packet.ssrc
        keyframe = self._video and is_keyframe_start(codec.mimeType, packet.payload)
        if keyframe:
            self._throttle.keyframe_seen()
        elif first and self._video and self.downs:
            # The stream's start was lost (e.g. sent before this side could route it): subscribers
            # that asked for a keyframe before any packet came would otherwise wait for the next one.
            self.request_keyframe()
        elif not self._video and self.on_audio_level is not None:
            level = packet.extensions.audio_level
            if level is not None:
                self.on_audio_level(level[1])
        if self.mcu_feed is not None:
            self.mcu_feed(packet)
        for down in self.downs:
            try:
                down.offer(packet, keyframe)
            except Exception:
                # One subscriber's failure must not starve the others nor reach aiortc's receive loop
                # (an exception there fails the publisher's transport).
                down.failures += 1
                self._counters.drops += 1
                if down.failures == 1:
                    logger.exception(
                        "forwarding to %s failed; later failures are only counted", down.info.track_id
                    )

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
        self._path = hooks.RtpSendPath(sender)
        self._seq = SequenceRewriter(random.randint(0, 0x7FFF))
        self._ts = TimestampRewriter(random.getrandbits(32))
        self.failures = 0  # unexpected errors while forwarding to this subscriber (logged once)
        # (serialized packet, payload length) by outgoing sequence number
        self.history: RtpHistory[tuple[bytes, int]] = RtpHistory(history_size)
        self._video = up.info.kind == "video"
        self._waiting_keyframe = self._video
        self._started = False
        self._pt = 0
        self._ssrc, _ = hooks.sender_ssrcs(sender)
        self._mid: str | None = None
        self.extensions = HeaderExtensionsMap()
        # audio level (None, or aiortc's (vad, level)) -> the packed header extension block
        self._ext_blocks: dict[tuple[bool, int] | None, tuple[int, bytes]] = {}

    def start(self, parameters: RTCRtpSendParameters) -> None:
        """Called once the subscriber negotiated this stream (aiortc started the sender)."""
        codec = parameters.codecs[0]
        self._pt = codec.payloadType or 0
        self._mid = parameters.muxId
        self.extensions.configure(parameters)
        self._ext_blocks.clear()
        self._started = True
        if self._video:
            self.up.request_keyframe()  # a late joiner needs one to start decoding

    def offer(self, packet: RtpPacket, keyframe: bool) -> None:
        """A packet from the publisher: rewrite and send it now, or drop it (never blocks)."""
        if not self._started:
            return
        if self._waiting_keyframe:
            if not keyframe:
                self._drop(packet.sequence_number)
                return
            self._waiting_keyframe = False
        if self._path.backlog() > self._writer.max_backlog:
            self._drop(packet.sequence_number)
            if self._video:
                self._waiting_keyframe = True
                self.up.request_keyframe()
            return
        seq = self._seq.rewrite(packet.sequence_number)
        if seq is None:
            self._counters.drops += 1
            return
        timestamp = self._ts.rewrite(packet.timestamp)
        level = packet.extensions.audio_level
        block = self._ext_blocks.get(level)
        if block is None:
            block = self._ext_blocks[level] = self._extension_block(level)
        payload = packet.payload
        data = (
            _RTP_HEADER.pack(block[0], (packet.marker << 7) | self._pt, seq, timestamp, self._ssrc)
            + block[1]
            + payload
        )
        if not self._send(data, len(payload)):
            return
        self.history.put(seq, (data, len(payload)))
        hooks.record_sent(self.sender, timestamp, len(payload), ntp_now())

    def _send(self, data: bytes, payload_bytes: int) -> bool:
        """Send one packet to the subscriber; counted as out, or as a drop when it could not go."""
        try:
            sent = self._path.send(data)
        except ConnectionError:
            sent = False
        counters = self._counters
        if not sent:
            counters.drops += 1
            return False
        counters.packets_out += 1
        counters.bytes_out += payload_bytes
        return True

    def _extension_block(self, audio_level: tuple[bool, int] | None) -> tuple[int, bytes]:
        """(first header byte, extension header + values) exactly as ``RtpPacket.serialize`` writes them."""
        values = HeaderExtensions(mid=self._mid, audio_level=audio_level)
        profile, value = self.extensions.set(values)
        if not value:
            return 0x80, b""
        return 0x90, struct.pack("!HH", profile, len(value) >> 2) + value

    def on_feedback(self, kind: str, lost: list[int]) -> None:
        """NACK or PLI/FIR from the subscriber."""
        if kind == "pli":
            self._counters.keyframe_requests_received += 1
            self.up.request_keyframe()
            return
        self._counters.nacks_received += len(lost)
        for seq in lost:
            kept = self.history.get(seq)
            if kept is None or self._path.backlog() > self._writer.max_backlog:
                continue
            # Resent as it was (same SSRC and sequence number), not wrapped in RTX: every receiver
            # takes a late packet, while aiortc receivers (our reference client, Python callers) drop
            # RTX when several m-lines share the RTX payload type (they route RTX by payload type
            # only), so they would NACK the same packets forever and their video would freeze.
            data, payload_bytes = kept
            if self._send(data, payload_bytes):
                self._counters.retransmissions += 1

    def _drop(self, seq: int) -> None:
        self._counters.drops += 1
        self._seq.drop(seq)


_RTP_HEADER = struct.Struct("!BBHLL")  # V=2 P X CC | M PT | sequence | timestamp | SSRC
NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP epoch) to 1970-01-01


def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp (what ``aiortc.clock.current_ntp_time`` returns, cheaper)."""
    now = time.time() + NTP_UNIX_OFFSET
    return int(now * (1 << 32))


class SubscriberWriter:
    """One subscriber's sending budget and counters.

    Packets go out synchronously, on the publisher reader's turn: SRTP-protect, then ``sendto`` on the
    ICE pair in use (``aiortc_hooks.RtpSendPath``). The bounded queue is the datagram transport's
    write buffer (it fills only when the kernel refuses datagrams): above ``max_backlog`` bytes
    (``queue_size`` full-size packets) the down tracks drop, video up to the next keyframe.
    """

    def __init__(self, counters: Counters, queue_size: int) -> None:
        self.counters = counters
        self.max_backlog = queue_size * MAX_PACKET_BYTES


MAX_PACKET_BYTES = 1500
