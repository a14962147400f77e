"""Which conference a user's DM call with the bot joins: memory of recent choices, and the pick.

A DM has no conference of its own: when a user calls the bot there, the call joins, in order,
1. the room the user chose with ``!visio join`` within the last ``choice_ttl`` (10 minutes),
2. else the room whose conference the bot most recently rang the user for,
3. else the only active conference among the rooms the user shares with the bot (checked by the
   caller, which can see the rooms).
``ConferenceChoices`` is the pure memory; ``pick_conference`` applies the rules, checking that the room
of 1. or 2. still has an active conference. Choices live in memory only: after a restart rule 3 (or a
new ``!visio join``) applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from visio_matrix.storage import ConferenceRecord

log = logging.getLogger(__name__)

CHOICE_TTL_S = 600.0

Why = Literal["chosen", "rang", "only_active"]


@dataclass(frozen=True)
class Pick:
    room_id: str
    why: Why


class ConferenceChoices:
    def __init__(self, choice_ttl_s: float = CHOICE_TTL_S) -> None:
        self._ttl = choice_ttl_s
        self._chosen: dict[str, tuple[str, float]] = {}  # user -> (room, monotonic time)
        self._rang: dict[str, tuple[str, float]] = {}

    def chose(self, user_id: str, room_id: str, now: float) -> None:
        self._chosen[user_id] = (room_id, now)

    def rang(self, user_id: str, room_id: str, now: float) -> None:
        self._rang[user_id] = (room_id, now)

    def candidates(self, user_id: str, now: float) -> list[Pick]:
        """Rooms to try, best first (rules 1 and 2; rule 3 is the caller's fallback)."""
        out: list[Pick] = []
        chosen = self._chosen.get(user_id)
        if chosen is not None:
            if now - chosen[1] <= self._ttl:
                out.append(Pick(chosen[0], "chosen"))
            else:
                del self._chosen[user_id]
        rang = self._rang.get(user_id)
        if rang is not None and all(p.room_id != rang[0] for p in out):
            out.append(Pick(rang[0], "rang"))
        return out

    def forget_room(self, room_id: str) -> None:
        """The room's conference ended: no choice points at it any more."""
        for memory in (self._chosen, self._rang):
            for user_id in [u for u, (r, _) in memory.items() if r == room_id]:
                del memory[user_id]


class ActiveConferences(Protocol):
    async def get_active_conference(self, room_id: str) -> ConferenceRecord | None: ...

    async def list_active_conferences(self) -> list[ConferenceRecord]: ...


class Members(Protocol):
    async def members(self, room_id: str) -> dict[str, str]: ...


async def pick_conference(
    choices: ConferenceChoices, store: ActiveConferences, rooms: Members, user_id: str, now: float
) -> str | None:
    """The room whose conference ``user_id``'s DM call joins, or None when the rules give none."""
    for pick in choices.candidates(user_id, now):
        if await store.get_active_conference(pick.room_id) is not None:
            log.info("DM call of %s goes to %s (%s)", user_id, pick.room_id, pick.why)
            return pick.room_id
    shared = [
        record.room_id
        for record in await store.list_active_conferences()
        if (await rooms.members(record.room_id)).get(user_id) == "join"
    ]
    if len(shared) == 1:
        log.info("DM call of %s goes to %s (the only active conference shared)", user_id, shared[0])
        return shared[0]
    log.info("DM call of %s: %d active conferences shared, none chosen", user_id, len(shared))
    return None
