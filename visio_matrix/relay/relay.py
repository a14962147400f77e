"""The relay: owns the conferences, the UDP port range and the event queue (implements ``RelayApi``)."""

from __future__ import annotations

import asyncio
import logging

from ..clock import Clock
from .aiortc_hooks import PortRange
from .api import RelayEvent, RelayOptions
from .conference import Conference
from .errors import ClosedError, RelayError, UnknownConferenceError

logger = logging.getLogger(__name__)


class Relay:
    """``Relay(options, clock)``; events of every conference arrive on ``events``."""

    def __init__(self, options: RelayOptions, clock: Clock) -> None:
        self.options = options
        self._clock = clock
        self._ports = PortRange(options.udp_port_min, options.udp_port_max)
        self._conferences: dict[str, Conference] = {}
        self.events: asyncio.Queue[RelayEvent] = asyncio.Queue(options.event_queue_size)
        self.dropped_events = 0
        self._closed = False

    async def create_conference(self, conference_id: str) -> Conference:
        if self._closed:
            raise ClosedError("the relay is closed")
        if conference_id in self._conferences:
            raise RelayError(f"conference {conference_id!r} already exists")
        conference = Conference(conference_id, self.options, self._clock, self._ports, self._emit)
        self._conferences[conference_id] = conference
        return conference

    def conference(self, conference_id: str) -> Conference:
        conference = self._conferences.get(conference_id)
        if conference is None:
            raise UnknownConferenceError(f"no conference {conference_id!r}")
        return conference

    def conference_ids(self) -> tuple[str, ...]:
        return tuple(self._conferences)

    async def close_conference(self, conference_id: str) -> None:
        conference = self._conferences.pop(conference_id, None)
        if conference is None:
            raise UnknownConferenceError(f"no conference {conference_id!r}")
        await conference.close()

    async def close(self) -> None:
        self._closed = True
        while self._conferences:
            _, conference = self._conferences.popitem()
            await conference.close()

    def _emit(self, event: RelayEvent) -> None:
        if self.events.full():
            self.events.get_nowait()
            self.dropped_events += 1
        self.events.put_nowait(event)
