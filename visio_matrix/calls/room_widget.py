"""The call as a room widget: when a room's conference starts, the bot adds the call page as an
``im.vector.modular.widgets`` state event (Element shows it as a "Join" button / panel); when the
conference ends, it removes it (empty content).

Adding state needs the room's power level for that event type (``state_default``, usually 50): a bot
without it is refused, which is logged and changes nothing else (members can still join by other
ways). Listens to the hub like ``room_status``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from visio_matrix.tasks import TaskOwner

from .hub_api import ConferenceEnded, ConferenceStarted, HubEvent

log = logging.getLogger(__name__)

WIDGET_EVENT_TYPE = "im.vector.modular.widgets"
WIDGET_ID = "visio-call"


class StateWriter(Protocol):
    async def put_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str: ...


class RoomWidget:
    def __init__(self, io: StateWriter, content_for: Callable[[str], dict[str, Any]]) -> None:
        self._io = io
        self._content_for = content_for  # room id -> widget state content
        self._tasks = TaskOwner("room-widget")

    async def stop(self) -> None:
        await self._tasks.close()

    async def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, ConferenceStarted):
            self._tasks.spawn(self._put(event.room_id, self._content_for(event.room_id)), "widget-add")
        elif isinstance(event, ConferenceEnded):
            self._tasks.spawn(self._put(event.room_id, {}), "widget-remove")

    async def _put(self, room_id: str, content: dict[str, Any]) -> None:
        try:
            await self._io.put_state(room_id, WIDGET_EVENT_TYPE, WIDGET_ID, content)
        except Exception as exc:  # the homeserver refused (power level) or is unreachable
            log.info("could not %s the call widget in %s: %s", "add" if content else "remove", room_id, exc)
