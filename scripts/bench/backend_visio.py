"""Our relay (``visio_matrix.relay``) behind the bench's HTTP signaling, driven through its public API.

One conference; one participant per bench participant (a single peer connection that publishes and
receives). Everyone receives every other participant's tracks (the relay's default); the relay's
``NegotiationNeeded`` offers wait in a per-participant queue that the peer long-polls (``/poll``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from visio_matrix.clock import SystemClock
from visio_matrix.relay import Conference, NegotiationNeeded, ParticipantFailed, Relay, RelayOptions

logger = logging.getLogger(__name__)
CONFERENCE = "bench"
POLL_TIMEOUT_S = 20.0


def participant_name(peer: int) -> str:
    return f"peer{peer}"


class VisioBackend:
    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        self._relay = Relay(
            RelayOptions(host_addresses=(host,), udp_port_min=port_min, udp_port_max=port_max),
            SystemClock(),
        )
        self._offers: dict[str, asyncio.Queue[str | None]] = {}  # None: closing
        self._conference: Conference | None = None
        self._pump: asyncio.Task[None] | None = None
        self.failures: list[str] = []

    async def _conf(self) -> Conference:
        if self._conference is None:
            self._conference = await self._relay.create_conference(CONFERENCE)
            self._pump = asyncio.create_task(self._pump_events())
        return self._conference

    def _queue(self, name: str) -> asyncio.Queue[str | None]:
        return self._offers.setdefault(name, asyncio.Queue())

    async def _pump_events(self) -> None:
        while True:
            event = await self._relay.events.get()
            if isinstance(event, NegotiationNeeded):
                self._queue(event.participant_id).put_nowait(event.offer_sdp)
            elif isinstance(event, ParticipantFailed):
                self.failures.append(f"{event.participant_id}: {event.reason}")
                logger.warning("participant %s failed: %s", event.participant_id, event.reason)

    async def join(self, peer: int, sdp: str | None) -> dict[str, str]:
        conf = await self._conf()
        name = participant_name(peer)
        self._queue(name)
        negotiated = await conf.add_participant(name, offer_sdp=sdp)
        return {"sdp": negotiated.sdp} if sdp is not None else {"offer": negotiated.sdp}

    async def poll(self, peer: int) -> str | None:
        queue = self._queue(participant_name(peer))
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(queue.get(), POLL_TIMEOUT_S)
        return None

    async def answer(self, peer: int, sdp: str) -> str | None:
        conf = await self._conf()
        await conf.accept_answer(participant_name(peer), sdp)
        return None

    async def publish(self, peer: int, sdp: str) -> str:
        raise NotImplementedError("the visio backend uses /join")

    async def subscribe(self, peer: int, feeds: list[int]) -> str | None:
        raise NotImplementedError("the visio backend uses /join")

    def stats(self) -> dict[str, Any]:
        if self._conference is None:
            return {}
        stats = dataclasses.asdict(self._conference.stats())
        stats.pop("participants", None)
        stats["failures"] = list(self.failures)
        return stats

    async def close(self) -> None:
        for queue in self._offers.values():  # end pending long polls now, not after POLL_TIMEOUT_S
            queue.put_nowait(None)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self._relay.close()
