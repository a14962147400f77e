"""A conference's MCU wiring: created with its first mcu-mode participant, fed by every up track.

Sources are the participants' up tracks (one audio and one video per participant); sinks are the
mcu-mode participants, each sent one mixed audio and one composite video on its own m-lines. A
keyframe request of the compositor goes to the source's video up track. The levels the MCU
decodes feed the active speaker for audio that carries no RFC 6464 level extension.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from ..clock import Clock
from ..tasks import TaskOwner
from .forwarding import UpTrack
from .mcu import McuSession
from .participant import Participant
from .speaker import levels_from_mcu

MCU_LEVELS_INTERVAL = 0.1


class ConferenceMcu:
    def __init__(
        self,
        participants: Mapping[str, Participant],
        clock: Clock,
        tasks: TaskOwner,
        observe_level: Callable[[str, int, float], None],
        evaluate_speaker: Callable[[], None],
        level_ext_seen: set[str],
    ) -> None:
        self._participants = participants
        self._clock = clock
        self._observe_level = observe_level
        self._evaluate_speaker = evaluate_speaker
        self._level_ext_seen = level_ext_seen
        self._session: McuSession | None = McuSession(self._keyframe, clock)
        self._sources: set[tuple[str, str]] = set()
        tasks.spawn(self._levels_loop(), "mcu-levels")
        for p in participants.values():
            for up in p.ups.values():
                self.add_source(p, up)

    def add_source(self, p: Participant, up: UpTrack) -> None:
        key = (p.id, up.info.kind)
        session = self._session
        if session is None or key in self._sources:
            return
        session.add_source(p.id, up.info.kind, up.codec)
        self._sources.add(key)
        kind, source = up.info.kind, p.id
        up.mcu_feed = lambda packet: session.feed(source, kind, packet)

    def remove_source(self, participant_id: str, kind: str) -> None:
        if self._session is not None and (participant_id, kind) in self._sources:
            self._session.remove_source(participant_id, kind)
            self._sources.discard((participant_id, kind))

    def remove_participant(self, p: Participant) -> None:
        for kind in ("audio", "video"):
            self.remove_source(p.id, kind)
        if p.mode == "mcu" and self._session is not None:
            self._session.remove_sink(p.id)

    def attach_mix(self, p: Participant, initial: bool) -> None:
        """Send ``p`` the mix: on new m-lines (relay offer) or on the ones it offered."""
        assert self._session is not None, "the MCU is closed"
        audio, video = self._session.add_sink(p.id)
        for track in (audio, video):
            if initial:
                t = p.pc.addTransceiver(track, direction="sendrecv")
            else:
                candidates = [
                    t
                    for t in p.pc.getTransceivers()
                    if t.kind == track.kind and t.sender.track is None and t not in p.down_transceivers
                ]
                if not candidates:
                    continue  # the endpoint offered no m-line of this kind
                t = candidates[0]
                t.sender.replaceTrack(track)
                t.direction = "sendrecv"
            p.mix_transceivers.add(t)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _keyframe(self, source_id: str) -> None:
        p = self._participants.get(source_id)
        if p is None:
            return
        for up in p.ups.values():
            if up.info.kind == "video":
                up.request_keyframe()
                return

    async def _levels_loop(self) -> None:
        """Active speaker for audio without the level extension, from the levels the MCU decodes."""
        while self._session is not None:
            await asyncio.sleep(MCU_LEVELS_INTERVAL)
            if self._session is None:
                return
            now = self._clock.now()
            for pid, level in levels_from_mcu(self._session.levels(), self._level_ext_seen).items():
                if pid in self._participants:
                    self._observe_level(pid, level, now)
            self._evaluate_speaker()
