"""The direct chat ("DM") between the bot and one user: recognising it, remembering it, creating it.

A DM here is a room where the bot is joined and exactly one other user is joined or invited (Tchap
direct chats allow two members, so a bot is never a third party in a DM between two people). The
room of each user's DM with the bot is remembered in the store's key/value state under
``dm.<user_id>``; a remembered room that stopped being a DM (the user left, someone else came in, the
bot was removed) is forgotten and, when the bot needs one (to ring the user), a fresh encrypted DM is
created (``is_direct`` invite, named "visio").

``BotRooms`` adapts the bot's device (``crypto.bot_device.BotDevice``) to what the DM call transport
needs: sending events, room state, room creation and alias resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nio import RoomCreateError, RoomPreset, RoomResolveAliasError

from visio_matrix.crypto.bot_device import BotDevice

log = logging.getLogger(__name__)

STATE_PREFIX = "dm."
DM_NAME = "visio"
MEGOLM = "m.megolm.v1.aes-sha2"


class DirectRoomError(Exception):
    """The DM could not be found or created (homeserver refused); ``str()`` is for the logs."""


class RoomsIO(Protocol):
    """The Matrix side of the DM call transport (``BotRooms`` in the service, fakes in tests)."""

    user_id: str

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str: ...

    async def room_state(self, room_id: str) -> list[dict[str, Any]]: ...

    async def create_direct_room(self, invitee: str, name: str) -> str: ...

    async def resolve_alias(self, alias: str) -> str | None: ...

    def two_member_rooms(self, user_id: str) -> list[str]:
        """Rooms the bot's device has synced whose only members are the bot and ``user_id``."""
        ...


class KeyValueStore(Protocol):
    async def get_state(self, key: str) -> str | None: ...

    async def set_state(self, key: str, value: str) -> None: ...

    async def delete_state(self, key: str) -> bool: ...


@dataclass(frozen=True)
class DirectRoom:
    room_id: str
    user_id: str
    user_joined: bool  # False while the user has only been invited


def memberships(state: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """user id -> membership, from a room's state events (pure)."""
    out: dict[str, str] = {}
    for event in state:
        if event.get("type") != "m.room.member":
            continue
        user_id, content = event.get("state_key"), event.get("content")
        if isinstance(user_id, str) and isinstance(content, Mapping):
            membership = content.get("membership")
            if isinstance(membership, str):
                out[user_id] = membership
    return out


def dm_partner(members: Mapping[str, str], bot_user_id: str) -> str | None:
    """The one other member when the room is a DM with the bot (bot joined, exactly one other
    user joined or invited), else None (pure)."""
    if members.get(bot_user_id) != "join":
        return None
    others = [u for u, m in members.items() if u != bot_user_id and m in ("join", "invite")]
    return others[0] if len(others) == 1 else None


class DirectRooms:
    """Finds, remembers and creates the DM of each user with the bot."""

    def __init__(self, io: RoomsIO, store: KeyValueStore) -> None:
        self._io = io
        self._store = store

    async def members(self, room_id: str) -> dict[str, str]:
        """The room's memberships; empty when the bot cannot read the room (not in it any more)."""
        try:
            return memberships(await self._io.room_state(room_id))
        except Exception as exc:  # the device raises its own error type; any failure means "not usable"
            log.info("cannot read the members of %s: %s", room_id, exc)
            return {}

    async def check(self, room_id: str, user_id: str) -> DirectRoom | None:
        """The room as ``user_id``'s DM with the bot, or None when it is not one."""
        members = await self.members(room_id)
        if dm_partner(members, self._io.user_id) != user_id:
            return None
        return DirectRoom(room_id, user_id, members.get(user_id) == "join")

    async def remember(self, room_id: str, user_id: str) -> None:
        key = STATE_PREFIX + user_id
        if await self._store.get_state(key) != room_id:
            await self._store.set_state(key, room_id)
            log.info("remembered %s as the DM of %s", room_id, user_id)

    async def find(self, user_id: str) -> DirectRoom | None:
        """The remembered DM, checked against the room's current members (forgotten when stale)."""
        key = STATE_PREFIX + user_id
        room_id = await self._store.get_state(key)
        if room_id is not None:
            room = await self.check(room_id, user_id)
            if room is not None:
                return room
            log.info("%s is no longer the DM of %s: forgetting it", room_id, user_id)
            await self._store.delete_state(key)
        # A DM the user made with the bot (invited it) and never called from is found in the synced rooms.
        for candidate in self._io.two_member_rooms(user_id):
            room = await self.check(candidate, user_id)
            if room is not None:
                await self.remember(candidate, user_id)
                return room
        return None

    async def ensure(self, user_id: str) -> DirectRoom:
        """The user's DM with the bot, created (encrypted, ``is_direct`` invite) when there is none."""
        room = await self.find(user_id)
        if room is not None:
            return room
        room_id = await self._io.create_direct_room(user_id, DM_NAME)
        log.info("created DM %s with %s", room_id, user_id)
        await self._store.set_state(STATE_PREFIX + user_id, room_id)
        return DirectRoom(room_id, user_id, user_joined=False)


class BotRooms:
    """``RoomsIO`` over the bot's device."""

    def __init__(self, device: BotDevice) -> None:
        self._device = device
        self.user_id = device.user_id

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str:
        return await self._device.send(room_id, event_type, content, timeout)

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        return await self._device.room_state(room_id)

    async def create_direct_room(self, invitee: str, name: str) -> str:
        response = await self._device.client.room_create(
            name=name,
            invite=[invitee],
            is_direct=True,
            preset=RoomPreset.trusted_private_chat,
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
        )
        if isinstance(response, RoomCreateError):
            raise DirectRoomError(
                f"could not create a DM with {invitee}: {response.status_code} {response.message}"
            )
        self._device.note_encrypted(response.room_id)
        return str(response.room_id)

    def two_member_rooms(self, user_id: str) -> list[str]:
        client = self._device.client
        return [
            room_id
            for room_id, room in client.rooms.items()
            if user_id in room.users and set(room.users) <= {user_id, self.user_id}
        ]

    async def resolve_alias(self, alias: str) -> str | None:
        response = await self._device.client.room_resolve_alias(alias)
        if isinstance(response, RoomResolveAliasError):
            log.info("alias %s not resolved: %s %s", alias, response.status_code, response.message)
            return None
        return str(response.room_id)
