"""The lobby: guests who came by a guest link wait here until a room member admits or denies them.

One ``Lobby`` per service, pure (no I/O, no tasks): the HTTP shell feeds it verified links and names,
the command shell feeds it ``!visio admit`` / ``!visio deny`` (after checking the sender's power level
in ``policy``), and both act on the ``GuestTicket`` / ``LobbyDecision`` values it returns (post
"<name> is waiting" into the room, tell the guest, issue a call token only to an admitted guest).

States of a guest, computed at the ``now_s`` passed in (wall-clock seconds, the clock of link expiry)::

                arrive()                admit()
      (link) ----------> WAITING ------------------> ADMITTED --(admission_valid_s)--> EXPIRED
                            |   \\                       (call token may be fetched)      |
                            |    \\ deny()                                                 |
                 (max_wait_s)     +-----------------> DENIED                              |
                            v                           |                                 |
                         EXPIRED                        +--(keep_s)--> forgotten <--(keep_s)

A decision is final: admitting an admitted guest (or denying a denied one) changes nothing and says so
(``changed=False``); the opposite decision, or deciding on an expired guest, is a ``LobbyError``.
Decided and expired guests are kept ``keep_s`` more seconds so their page can still show the outcome,
then ``forget_expired`` drops them (an unknown ``guest_id`` is a ``LobbyError`` "unknown_guest").

``guest_id`` is random and unguessable: it is the guest's own handle (kept by their browser) and
the only way to ask for their status or call token. Room members may also name a guest by its
display name, unique among the room's waiting and admitted guests ("Ann", "Ann (2)", ...), compared
case-insensitively after Unicode NFKC normalisation. Display names are plain text: the shell must
still escape them wherever they are rendered (HTML, Matrix formatted bodies).

Bounds: at most ``max_waiting_per_room`` waiting guests per room and ``max_active`` waiting or
admitted guests over all rooms; beyond, ``arrive`` refuses ("room_full" / "lobby_full").
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from visio_matrix.web.guest_links import GuestLink

MAX_NAME_CHARS = 64
DEFAULT_MAX_WAIT_S = 600.0
DEFAULT_ADMISSION_VALID_S = 300.0
DEFAULT_KEEP_S = 600.0
DEFAULT_MAX_WAITING_PER_ROOM = 50
DEFAULT_MAX_ACTIVE = 1000

LobbyErrorCode = Literal[
    "invalid_name",
    "link_expired",
    "room_full",
    "lobby_full",
    "unknown_guest",
    "wrong_room",
    "ambiguous_name",
    "already_decided",
    "expired",
    "not_admitted",
]

# Unicode categories refused in names: controls, format characters (bidi overrides, zero-width
# characters that make two names look alike), surrogates, private use, unassigned, line separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class LobbyError(Exception):
    """A lobby request refused; ``code`` for the shell, ``message`` for the person who asked."""

    def __init__(self, code: LobbyErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: LobbyErrorCode = code
        self.message = message


class GuestState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True)
class GuestTicket:
    """A guest as seen at one instant. ``state_until_s``: when waiting or admission ends (else None)."""

    guest_id: str
    room_id: str
    name: str
    state: GuestState
    link_id: str
    arrived_at_s: float
    state_until_s: float | None = None
    decided_by: str | None = None
    decided_at_s: float | None = None


@dataclass(frozen=True)
class LobbyDecision:
    """The outcome of ``admit`` / ``deny``: the guest afterwards, and whether this call changed it."""

    ticket: GuestTicket
    changed: bool


@dataclass
class _Guest:
    guest_id: str
    room_id: str
    name: str
    link_id: str
    arrived_at_s: float
    decision: GuestState | None = None  # ADMITTED or DENIED once decided
    decided_by: str | None = None
    decided_at_s: float | None = None


def validate_name(raw: str) -> str:
    """The display name a guest typed, trimmed and NFC-normalised; ``LobbyError`` "invalid_name" if unfit."""
    if not isinstance(raw, str):
        raise LobbyError("invalid_name", "The name must be text.")
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise LobbyError("invalid_name", "Please type a name.")
    if len(name) > MAX_NAME_CHARS:
        raise LobbyError("invalid_name", f"The name must be at most {MAX_NAME_CHARS} characters.")
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in name):
        raise LobbyError("invalid_name", "The name must not contain control or invisible characters.")
    return name


def _name_key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def _new_guest_id() -> str:
    return secrets.token_urlsafe(24)


class Lobby:
    """Waiting, admitted and denied guests of every room this service hands out guest links for."""

    def __init__(
        self,
        *,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        admission_valid_s: float = DEFAULT_ADMISSION_VALID_S,
        keep_s: float = DEFAULT_KEEP_S,
        max_waiting_per_room: int = DEFAULT_MAX_WAITING_PER_ROOM,
        max_active: int = DEFAULT_MAX_ACTIVE,
        new_guest_id: Callable[[], str] = _new_guest_id,
    ) -> None:
        if max_wait_s <= 0 or admission_valid_s <= 0 or keep_s < 0:
            raise ValueError("max_wait_s and admission_valid_s must be positive, keep_s not negative")
        if max_waiting_per_room < 1 or max_active < 1:
            raise ValueError("max_waiting_per_room and max_active must be at least 1")
        self._max_wait_s = max_wait_s
        self._admission_valid_s = admission_valid_s
        self._keep_s = keep_s
        self._max_waiting_per_room = max_waiting_per_room
        self._max_active = max_active
        self._new_guest_id = new_guest_id
        self._guests: dict[str, _Guest] = {}

    # --- the guest's side -------------------------------------------------------------------------

    def arrive(self, link: GuestLink, name: str, now_s: float) -> GuestTicket:
        """A guest holding a verified ``link`` asks to join under ``name``: a WAITING ticket."""
        if now_s >= link.expires_at_s:
            raise LobbyError("link_expired", "This link has expired.")
        clean = validate_name(name)
        active = [g for g in self._guests.values() if self._state(g, now_s) in _ACTIVE]
        if len(active) >= self._max_active:
            raise LobbyError("lobby_full", "Too many guests right now; please try again later.")
        in_room = [g for g in active if g.room_id == link.room_id]
        waiting = sum(1 for g in in_room if self._state(g, now_s) is GuestState.WAITING)
        if waiting >= self._max_waiting_per_room:
            raise LobbyError("room_full", "Too many guests are already waiting for this room.")
        unique = _unique_name(clean, {_name_key(g.name) for g in in_room})
        guest_id = self._new_guest_id()
        if guest_id in self._guests:
            raise RuntimeError("guest ID generator repeated itself")
        guest = _Guest(guest_id, link.room_id, unique, link.link_id, now_s)
        self._guests[guest_id] = guest
        return self._ticket(guest, now_s)

    def status(self, guest_id: str, now_s: float) -> GuestTicket:
        """The guest's ticket now (what their waiting page shows)."""
        return self._ticket(self._get(guest_id), now_s)

    def admission(self, guest_id: str, now_s: float) -> GuestTicket:
        """The ticket of an ADMITTED guest (before issuing their call token); "not_admitted" otherwise."""
        ticket = self.status(guest_id, now_s)
        if ticket.state is not GuestState.ADMITTED:
            raise LobbyError("not_admitted", f"This guest is {ticket.state.value}, not admitted.")
        return ticket

    # --- the room members' side -------------------------------------------------------------------

    def admit(self, room_id: str, name_or_id: str, by_user: str, now_s: float) -> LobbyDecision:
        """``by_user`` (whose power level the caller checked) lets the guest in."""
        return self._decide(room_id, name_or_id, by_user, now_s, GuestState.ADMITTED)

    def deny(self, room_id: str, name_or_id: str, by_user: str, now_s: float) -> LobbyDecision:
        """``by_user`` turns the guest away."""
        return self._decide(room_id, name_or_id, by_user, now_s, GuestState.DENIED)

    def waiting(self, room_id: str, now_s: float) -> list[GuestTicket]:
        """The room's waiting guests, first arrived first."""
        guests = [
            g
            for g in self._guests.values()
            if g.room_id == room_id and self._state(g, now_s) is GuestState.WAITING
        ]
        return [self._ticket(g, now_s) for g in sorted(guests, key=lambda g: g.arrived_at_s)]

    def forget_expired(self, now_s: float) -> list[GuestTicket]:
        """Drop guests whose outcome was kept long enough; returns their last tickets."""
        gone = [g for g in self._guests.values() if self._forgettable(g, now_s)]
        for guest in gone:
            del self._guests[guest.guest_id]
        return [self._ticket(g, now_s) for g in gone]

    def __len__(self) -> int:
        return len(self._guests)

    # --- internals --------------------------------------------------------------------------------

    def _decide(
        self, room_id: str, name_or_id: str, by_user: str, now_s: float, decision: GuestState
    ) -> LobbyDecision:
        guest = self._find(room_id, name_or_id, now_s)
        state = self._state(guest, now_s)
        if state is decision:
            return LobbyDecision(self._ticket(guest, now_s), changed=False)
        if state is GuestState.EXPIRED:
            raise LobbyError("expired", f"{guest.name} is no longer waiting.")
        if state is not GuestState.WAITING:
            raise LobbyError("already_decided", f"{guest.name} was already {state.value}.")
        guest.decision = decision
        guest.decided_by = by_user
        guest.decided_at_s = now_s
        return LobbyDecision(self._ticket(guest, now_s), changed=True)

    def _find(self, room_id: str, name_or_id: str, now_s: float) -> _Guest:
        text = name_or_id.strip()
        key = _name_key(text)
        by_name = [
            g
            for g in self._guests.values()
            if g.room_id == room_id and self._state(g, now_s) in _ACTIVE and _name_key(g.name) == key
        ]
        by_id = self._guests.get(text)
        if by_id is not None and by_id.room_id != room_id:
            if not by_name:
                raise LobbyError("wrong_room", "That guest is waiting for another room.")
            by_id = None  # another room's guest ID that happens to be a name here: the name wins
        candidates = {g.guest_id: g for g in [*([by_id] if by_id else []), *by_name]}
        if len(candidates) > 1:
            # Names are unique among active guests, so only a name that is also another guest's ID.
            raise LobbyError("ambiguous_name", f"More than one guest matches {text!r}; use the guest ID.")
        if not candidates:
            raise LobbyError("unknown_guest", f"No guest {text!r} is waiting in this room.")
        return next(iter(candidates.values()))

    def _get(self, guest_id: str) -> _Guest:
        guest = self._guests.get(guest_id)
        if guest is None:
            raise LobbyError("unknown_guest", "Unknown guest (the visit may have ended).")
        return guest

    def _state(self, guest: _Guest, now_s: float) -> GuestState:
        if guest.decision is GuestState.DENIED:
            return GuestState.DENIED
        if guest.decision is GuestState.ADMITTED:
            assert guest.decided_at_s is not None
            if now_s < guest.decided_at_s + self._admission_valid_s:
                return GuestState.ADMITTED
            return GuestState.EXPIRED
        if now_s < guest.arrived_at_s + self._max_wait_s:
            return GuestState.WAITING
        return GuestState.EXPIRED

    def _state_until(self, guest: _Guest, state: GuestState) -> float | None:
        if state is GuestState.WAITING:
            return guest.arrived_at_s + self._max_wait_s
        if state is GuestState.ADMITTED:
            assert guest.decided_at_s is not None
            return guest.decided_at_s + self._admission_valid_s
        return None

    def _forgettable(self, guest: _Guest, now_s: float) -> bool:
        state = self._state(guest, now_s)
        if state is GuestState.DENIED:
            assert guest.decided_at_s is not None
            return now_s >= guest.decided_at_s + self._keep_s
        if state is GuestState.EXPIRED:
            if guest.decided_at_s is not None:
                ended = guest.decided_at_s + self._admission_valid_s
            else:
                ended = guest.arrived_at_s + self._max_wait_s
            return now_s >= ended + self._keep_s
        return False

    def _ticket(self, guest: _Guest, now_s: float) -> GuestTicket:
        state = self._state(guest, now_s)
        return GuestTicket(
            guest_id=guest.guest_id,
            room_id=guest.room_id,
            name=guest.name,
            state=state,
            link_id=guest.link_id,
            arrived_at_s=guest.arrived_at_s,
            state_until_s=self._state_until(guest, state),
            decided_by=guest.decided_by,
            decided_at_s=guest.decided_at_s,
        )


_ACTIVE = frozenset({GuestState.WAITING, GuestState.ADMITTED})


def _unique_name(name: str, taken_keys: set[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``... (cut to fit ``MAX_NAME_CHARS``) if already taken."""
    if _name_key(name) not in taken_keys:
        return name
    n = 2
    while True:
        suffix = f" ({n})"
        candidate = name[: MAX_NAME_CHARS - len(suffix)].rstrip() + suffix
        if _name_key(candidate) not in taken_keys:
            return candidate
        n += 1
