"""Room membership as the bot sees it: the hub's and the token service's access check.

Asks the homeserver (through the bot's device) for the user's current ``m.room.member`` state, so a
kick or leave counts at once; a room the bot is not in answers "not joined".
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StateReader(Protocol):
    async def get_state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None: ...


class BotRoomAccess:
    def __init__(self, reader: StateReader) -> None:
        self._reader = reader

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        try:
            content = await self._reader.get_state_event(room_id, "m.room.member", user_id)
        except Exception as exc:  # the bot is not in the room, or the homeserver is unreachable
            log.info("membership of %s in %s unknown (%s): treated as not joined", user_id, room_id, exc)
            return False
        return content is not None and content.get("membership") == "join"
