"""Which Matrix room (and MatrixRTC slot) a LiveKit room name stands for.

LiveKit room names are hashes (``identity.livekit_room_name``), so they cannot be read back. The
token service records each name it hands out, in the store's key/value state under
``focus.room.<name>``, for the signaling side's logs and for admins. Tokens carry the room in their
``io.visio`` claim, so nothing depends on this record being there. A name's binding never changes
(it is a hash of the room and slot), so a small cache skips repeated writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

STATE_PREFIX = "focus.room."
CACHE_LIMIT = 10_000


class StateStore(Protocol):
    """The part of ``visio_matrix.storage.Store`` this needs."""

    async def get_state(self, key: str) -> str | None: ...

    async def set_state(self, key: str, value: str) -> None: ...


@dataclass(frozen=True)
class RoomBinding:
    room_id: str
    slot_id: str


class RoomRegistry:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._cache: dict[str, RoomBinding] = {}

    async def remember(self, name: str, room_id: str, slot_id: str) -> None:
        binding = RoomBinding(room_id, slot_id)
        if self._cache.get(name) == binding:
            return
        await self._store.set_state(
            STATE_PREFIX + name, json.dumps({"room_id": room_id, "slot_id": slot_id}, sort_keys=True)
        )
        self._cache_put(name, binding)

    async def lookup(self, name: str) -> RoomBinding | None:
        """The room and slot behind ``name``, or None when this service never issued a token for it."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        raw = await self._store.get_state(STATE_PREFIX + name)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            binding = RoomBinding(str(data["room_id"]), str(data["slot_id"]))
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring an unreadable focus room record for %s", name)
            return None
        self._cache_put(name, binding)
        return binding

    def _cache_put(self, name: str, binding: RoomBinding) -> None:
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[name] = binding
