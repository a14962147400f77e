"""Which conference a user's DM call with the bot joins (pure memory of recent choices).

A DM has no conference of its own: when a user calls the bot there, the call joins, in order,
1. the room the user chose with ``!visio join`` within the last ``choice_ttl`` (10 minutes),
2. else the room whose conference the bot most recently rang the user for,
3. else the only active conference among the rooms the user shares with the bot (checked by the
   caller, which can see the rooms).
The caller also checks that the room of 1. or 2. still has an active conference. Choices live in
memory only: after a restart rule 3 (or a new ``!visio join``) applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
