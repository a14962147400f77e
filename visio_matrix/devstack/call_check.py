"""A real call in an encrypted room, with reference clients: used by ``scripts/demo --check`` and
``scripts/bench-calls``.

Someone types ``!visio start``; every participant (a ``visio_matrix.client`` on its own new device)
joins once the bot has answered, publishing its own colour and tone; then each one waits for the
audio and video of every other participant and checks that the colour and the pitch are the sender's
(so media is not only flowing but going to the right people under the right names). The report has,
per participant, the frames received from each other one and the time from ``!visio start`` to its
first frame from everyone. Participants may come from several homeservers, each signaling its own
ministry's bot (``homes``, issue 5).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection

from visio_matrix.client.matrix import VisioMatrixClient, login_client
from visio_matrix.client.media import ColorVideoTrack, MediaProbe, Received, ToneAudioTrack
from visio_matrix.client.session import ConferenceClient
from visio_matrix.devstack.user import MatrixUser, MessageView
from visio_matrix.relay import restrict_ice

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0  # the clients' closing at the end never holds the check longer than this
CHECK_TIMEOUT_S = 300.0  # a whole demo call check, however it goes
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 200), (40, 200, 200))


def colour_of(index: int) -> tuple[int, int, int]:
    return COLOURS[index % len(COLOURS)]


def tone_of(index: int) -> float:
    return 300.0 + 100.0 * index


def loopback_pc(config: RTCConfiguration) -> RTCPeerConnection:
    return restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])


@dataclass
class FromPeer:
    user_id: str
    video: Received | None = None
    audio: Received | None = None
    first_frame_after_s: float | None = None  # from !visio start to its video and audio both

    @property
    def ready(self) -> bool:
        return bool(self.video and self.video.frames and self.audio and self.audio.frames)


@dataclass
class ParticipantReport:
    user_id: str
    joined_after_s: float | None = None  # from !visio start to the bot's answer
    first_frame_after_s: float | None = None  # from !visio start to media from every other participant
    error: str | None = None
    peers: dict[str, FromPeer] = field(default_factory=dict)
    served_by: str | None = None  # the bot device whose relay sent this participant its media
    content_ok: bool = False

    def line(self) -> str:
        parts = [
            f"{other}: video {p.video.frames if p.video else 0} frames, audio {p.audio.frames if p.audio else 0} frames"
            for other, p in self.peers.items()
        ]
        first = f"{self.first_frame_after_s:.2f}s" if self.first_frame_after_s is not None else "never"
        status = "OK" if self.content_ok and not self.error else f"FAILED ({self.error or 'wrong media'})"
        return (
            f"{self.user_id}: first frame {first} after !visio start | " + " | ".join(parts) + f" | {status}"
        )


@dataclass
class CallResult:
    reports: list[ParticipantReport]
    start_reply_s: float

    @property
    def ok(self) -> bool:
        return bool(self.reports) and all(r.content_ok and not r.error for r in self.reports)


class _Participant:
    def __init__(self, index: int, matrix: VisioMatrixClient, room_id: str, bot_user_id: str) -> None:
        self.index = index
        self.matrix = matrix
        self.video = ColorVideoTrack(colour_of(index))
        self.audio = ToneAudioTrack(tone_of(index))
        self.call = ConferenceClient(
            matrix.client,
            room_id,
            bot_user_id,
            channel=matrix.to_device,
            peer_connection_factory=loopback_pc,
            join_timeout=20.0,
        )
        self.probe = MediaProbe()
        self.report = ParticipantReport(matrix.user_id)

    async def close(self) -> None:
        try:
            await self.call.leave()
        finally:
            await self.probe.close()
            self.video.stop()
            self.audio.stop()
            await self.matrix.close()


async def _watch(p: _Participant, others: Sequence[_Participant], t0: float, timeout: float) -> None:
    async def one(other: _Participant) -> None:
        peer = FromPeer(other.matrix.user_id)
        p.report.peers[other.matrix.user_id] = peer
        video = await p.call.wait_for_track(other.matrix.user_id, "video", timeout)
        peer.video = p.probe.watch(video.track)
        audio = await p.call.wait_for_track(other.matrix.user_id, "audio", timeout)
        peer.audio = p.probe.watch(audio.track)
        await peer.video.got_frame.wait()
        await peer.audio.got_frame.wait()
        peer.first_frame_after_s = max(peer.video.first_frame_at or 0, peer.audio.first_frame_at or 0) - t0

    await asyncio.wait_for(asyncio.gather(*(one(o) for o in others)), timeout)
    firsts = [
        max(x.first_frame_at or 0 for x in (peer.video, peer.audio) if x) for peer in p.report.peers.values()
    ]
    p.report.first_frame_after_s = max(firsts) - t0 if firsts else 0.0


async def run_call(
    homeserver_url: str,
    bot_user_id: str,
    room_id: str,
    starter: MatrixUser,
    people: Sequence[tuple[str, str]],
    store_root: Path,
    listen_s: float = 2.0,
    timeout: float = 30.0,
    stop_after: bool = True,
    homes: Sequence[tuple[str, str]] | None = None,
) -> CallResult:
    """``people``: (user id, password) of room members who join with a new reference-client device.

    ``homes``: per person, (homeserver URL, bot user id) when they differ from ``homeserver_url`` and
    ``bot_user_id`` (people of several ministries); ``bot_user_id`` is then the starter's bot.
    """
    if homes is not None and len(homes) != len(people):
        raise ValueError(f"homes: {len(homes)} entries for {len(people)} people")
    home = list(homes) if homes is not None else [(homeserver_url, bot_user_id)] * len(people)
    matrix = await asyncio.gather(
        *(
            login_client(home[i][0], user_id, password, store_root / f"{i}-{time.time_ns()}", "visio-check")
            for i, (user_id, password) in enumerate(people)
        )
    )
    participants = [_Participant(i, m, room_id, home[i][1]) for i, m in enumerate(matrix)]
    try:
        t0 = time.monotonic()
        await starter.send_text(room_id, "!visio start")
        await starter.wait_for_message(room_id, _bot_said(bot_user_id, "📞 Call started"), timeout=timeout)
        start_reply = time.monotonic() - t0

        async def join(p: _Participant) -> None:
            try:
                await p.call.join([p.audio, p.video])
                p.report.joined_after_s = time.monotonic() - t0
                focus = p.call.focus
                p.report.served_by = f"{focus.user_id}/{focus.device_id}" if focus else None
                await _watch(p, [o for o in participants if o is not p], t0, timeout)
            except Exception as exc:  # reported per participant; the others go on
                p.report.error = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(join(p) for p in participants))
        await asyncio.sleep(listen_s)
        for p in participants:
            p.report.content_ok = p.report.error is None and all(
                peer.ready
                and peer.video is not None
                and peer.video.colour_close_to(colour_of(_index_of(participants, other)))
                and peer.audio is not None
                and abs(peer.audio.dominant_frequency() - tone_of(_index_of(participants, other))) < 25
                for other, peer in p.report.peers.items()
            )
        if stop_after:
            await starter.send_text(room_id, "!visio stop")
            await starter.wait_for_message(room_id, _bot_said(bot_user_id, "📴 Call ended"), timeout=timeout)
        return CallResult([p.report for p in participants], start_reply)
    finally:
        closing = asyncio.gather(*(p.close() for p in participants), return_exceptions=True)
        try:
            await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("the call check's clients did not close within %.0f s", CLOSE_TIMEOUT_S)


class CheckTimeout(Exception):
    """The whole call check took longer than its limit (each step has its own timeout besides)."""


async def run_call_within(limit_s: float, *args: Any, **kwargs: Any) -> CallResult:
    """``run_call`` that never takes longer than ``limit_s`` (a demo check must end, whatever hangs)."""
    try:
        async with asyncio.timeout(limit_s) as deadline:
            return await run_call(*args, **kwargs)
    except TimeoutError:
        if deadline.expired():
            raise CheckTimeout(f"not done within {limit_s:.0f} s") from None
        raise


def _index_of(participants: Sequence[_Participant], user_id: str) -> int:
    return next(p.index for p in participants if p.matrix.user_id == user_id)


def _bot_said(bot: str, prefix: str) -> Callable[[MessageView], bool]:
    return lambda m: m.sender == bot and (m.body or "").startswith(prefix)
