"""The ``!visio join`` and ``!visio ring`` commands: choosing a conference for DM calls, ringing members.

- ``!visio join`` in a room with an active conference: remember the choice (``dm_choice``) and ring the
  sender in their DM with the bot; ``!visio join <room id or alias>`` (in the DM or anywhere) does the
  same for that room, if the sender is a member of it.
- ``!visio ring`` in a room with an active conference (needs ``policy.start_power_level``): ring every
  joined member except the sender, the bot and those already in the call.
The ringing itself is ``DmCalls.ring``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from visio_matrix.appservice.events import RoomEvent
from visio_matrix.calls.commands import Command
from visio_matrix.calls.direct_rooms import DirectRooms, memberships
from visio_matrix.calls.dm_choice import ConferenceChoices
from visio_matrix.calls.hub_api import HubApi
from visio_matrix.calls.policy import may_act
from visio_matrix.clock import Clock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.storage import ConferenceRecord

log = logging.getLogger(__name__)


class CommandRooms(Protocol):
    user_id: str

    async def room_state(self, room_id: str) -> list[dict[str, Any]]: ...

    async def resolve_alias(self, alias: str) -> str | None: ...


class ActiveConferences(Protocol):
    async def get_active_conference(self, room_id: str) -> ConferenceRecord | None: ...


class Ringer(Protocol):
    async def ring(self, user_id: str, conference_room_id: str) -> str: ...


class DmCommands:
    def __init__(
        self,
        rooms: CommandRooms,
        hub: HubApi,
        store: ActiveConferences,
        directs: DirectRooms,
        choices: ConferenceChoices,
        ringer: Ringer,
        policy: PolicyConfig,
        clock: Clock,
    ) -> None:
        self._io = rooms
        self._hub = hub
        self._store = store
        self._directs = directs
        self._choices = choices
        self._ringer = ringer
        self._policy = policy
        self._clock = clock

    async def on_command(self, event: RoomEvent, command: Command) -> tuple[str, str]:
        """(reply text, metrics result). Never raises."""
        try:
            if command.name == "join":
                return await self._join(event, command)
            if command.name == "ring":
                return await self._ring(event)
        except Exception:
            log.exception("DM calls: command %s from %s failed", command.name, event.sender)
            return "Sorry, something went wrong.", "error"
        return f"Unknown command '{command.raw_name}'.", "unknown"

    async def _join(self, event: RoomEvent, command: Command) -> tuple[str, str]:
        user_id = event.sender
        if command.args:
            target = await self._resolve(command.args[0])
            if target is None:
                return f"I do not know the room {command.args[0]}.", "unknown_room"
        elif await self._directs.check(event.room_id, user_id) is not None:
            return "Tell me which room: !visio join <room id or alias>.", "usage"
        else:
            target = event.room_id
        if await self._store.get_active_conference(target) is None:
            return "There is no call in that room right now (!visio start starts one there).", "none"
        if (await self._directs.members(target)).get(user_id) != "join":
            return "You can only join the call of a room you are a member of.", "denied"
        self._choices.chose(user_id, target, self._clock.now())
        return await self._ringer.ring(user_id, target), "ok"

    async def _ring(self, event: RoomEvent) -> tuple[str, str]:
        if await self._store.get_active_conference(event.room_id) is None:
            return "There is no call in this room to ring people for (!visio start starts one).", "none"
        state = await self._io.room_state(event.room_id)
        power = next((e.get("content") for e in state if e.get("type") == "m.room.power_levels"), None)
        create = next((e for e in state if e.get("type") == "m.room.create"), None)
        decision = may_act(event.sender, self._policy.start_power_level, power, create, "Ringing members")
        if not decision.allowed:
            return f"Sorry: {decision.reason}.", "denied"
        in_call = {p.identity.user_id for p in self._hub.participants(event.room_id)}
        targets = [
            user_id
            for user_id, membership in sorted(memberships(state).items())
            if membership == "join"
            and user_id not in (event.sender, self._io.user_id)
            and user_id not in in_call
            and self._policy.user_allowed(user_id)
        ]
        if not targets:
            return "Everyone here is already in the call.", "ok"
        lines = [await self._ringer.ring(user_id, event.room_id) for user_id in targets]
        return f"Ringing {len(targets)} member(s) in their direct chat with me:\n" + "\n".join(lines), "ok"

    async def _resolve(self, ref: str) -> str | None:
        if ref.startswith("#"):
            return await self._io.resolve_alias(ref)
        return ref if ref.startswith("!") else None
