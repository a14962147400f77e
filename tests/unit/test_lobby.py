"""The lobby state machine: arrive, admit/deny, status over time, names, limits, forgetting."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from visio_matrix.web.guest_links import GuestLink
from visio_matrix.web.lobby import (
    MAX_NAME_CHARS,
    GuestState,
    Lobby,
    LobbyError,
    validate_name,
)

T0 = 1_700_000_000.0
ROOM = "!room:example.org"
ROOM2 = "!other:example.org"
LINK = GuestLink(ROOM, int(T0) + 3600, "link-1")
LINK2 = GuestLink(ROOM2, int(T0) + 3600, "link-2")
MOD = "@mod:example.org"


def counter_ids(prefix: str = "g") -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}{next(numbers)}"


def make_lobby(**kwargs: object) -> Lobby:
    options: dict[str, object] = {
        "max_wait_s": 600.0,
        "admission_valid_s": 300.0,
        "keep_s": 600.0,
        "new_guest_id": counter_ids(),
        **kwargs,
    }
    return Lobby(**options)  # type: ignore[arg-type]


# --- flows -----------------------------------------------------------------------------------------


def test_arrive_then_admit_by_name() -> None:
    lobby = make_lobby()
    ticket = lobby.arrive(LINK, "  Ann  ", T0)
    assert (ticket.guest_id, ticket.room_id, ticket.name, ticket.state) == ("g1", ROOM, "Ann", "waiting")
    assert ticket.link_id == "link-1" and ticket.state_until_s == T0 + 600
    assert lobby.waiting(ROOM, T0 + 1) == [ticket]

    decision = lobby.admit(ROOM, "ann", MOD, T0 + 10)
    assert decision.changed
    assert decision.ticket.state is GuestState.ADMITTED
    assert decision.ticket.decided_by == MOD and decision.ticket.decided_at_s == T0 + 10
    assert decision.ticket.state_until_s == T0 + 310

    assert lobby.status("g1", T0 + 20).state == "admitted"
    assert lobby.admission("g1", T0 + 20).guest_id == "g1"
    assert lobby.waiting(ROOM, T0 + 20) == []


def test_admit_by_id() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    lobby.arrive(LINK, "Bob", T0)
    decision = lobby.admit(ROOM, " g2 ", MOD, T0 + 1)
    assert decision.ticket.name == "Bob" and decision.changed
    assert lobby.status("g1", T0 + 1).state == "waiting"


def test_deny() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    decision = lobby.deny(ROOM, "Ann", MOD, T0 + 5)
    assert decision.changed and decision.ticket.state is GuestState.DENIED
    assert decision.ticket.state_until_s is None
    assert lobby.status("g1", T0 + 500).state == "denied"
    with pytest.raises(LobbyError) as err:
        lobby.admission("g1", T0 + 6)
    assert err.value.code == "not_admitted"


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ("admit", "admit", "unchanged"),
        ("deny", "deny", "unchanged"),
        ("admit", "deny", "already_decided"),
        ("deny", "admit", "already_decided"),
    ],
)
def test_second_decision(first: str, second: str, outcome: str) -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    getattr(lobby, first)(ROOM, "g1", MOD, T0 + 1)
    if outcome == "unchanged":
        decision = getattr(lobby, second)(ROOM, "g1", "@other:example.org", T0 + 2)
        assert not decision.changed
        assert decision.ticket.decided_by == MOD and decision.ticket.decided_at_s == T0 + 1
    else:
        with pytest.raises(LobbyError) as err:
            getattr(lobby, second)(ROOM, "g1", MOD, T0 + 2)
        assert err.value.code == outcome


# --- time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "state"),
    [(0, "waiting"), (599.9, "waiting"), (600, "expired"), (5000, "expired")],
)
def test_waiting_expires(elapsed: float, state: str) -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    assert lobby.status("g1", T0 + elapsed).state == state
    assert len(lobby.waiting(ROOM, T0 + elapsed)) == (1 if state == "waiting" else 0)


@pytest.mark.parametrize(("elapsed", "state"), [(299.9, "admitted"), (300, "expired")])
def test_admission_expires(elapsed: float, state: str) -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    lobby.admit(ROOM, "Ann", MOD, T0 + 100)
    assert lobby.status("g1", T0 + 100 + elapsed).state == state
    if state == "expired":
        with pytest.raises(LobbyError) as err:
            lobby.admission("g1", T0 + 100 + elapsed)
        assert err.value.code == "not_admitted"


@pytest.mark.parametrize("verb", ["admit", "deny"])
def test_decision_on_expired_guest(verb: str) -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    with pytest.raises(LobbyError) as err:
        getattr(lobby, verb)(ROOM, "g1", MOD, T0 + 600)
    assert err.value.code == "expired"
    with pytest.raises(LobbyError) as err:  # by name: an expired guest no longer holds its name
        getattr(lobby, verb)(ROOM, "Ann", MOD, T0 + 600)
    assert err.value.code == "unknown_guest"


def test_arrive_with_expired_link() -> None:
    lobby = make_lobby()
    with pytest.raises(LobbyError) as err:
        lobby.arrive(LINK, "Ann", LINK.expires_at_s)
    assert err.value.code == "link_expired"
    assert len(lobby) == 0


def test_forget_expired() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Waiter", T0)  # g1: expires T0+600, forgotten from T0+1200
    lobby.arrive(LINK, "Denied", T0)  # g2: denied T0+10, forgotten from T0+610
    lobby.arrive(LINK, "Admitted", T0)  # g3: admitted T0+10, expires T0+310, forgotten from T0+910
    lobby.arrive(LINK, "Late", T0 + 500)  # g4: waiting until T0+1100
    lobby.deny(ROOM, "Denied", MOD, T0 + 10)
    lobby.admit(ROOM, "Admitted", MOD, T0 + 10)

    assert lobby.forget_expired(T0 + 609) == []
    gone = lobby.forget_expired(T0 + 610)
    assert [(t.guest_id, t.state) for t in gone] == [("g2", "denied")]
    assert [t.guest_id for t in lobby.forget_expired(T0 + 910)] == ["g3"]
    assert [t.guest_id for t in lobby.forget_expired(T0 + 1200)] == ["g1"]
    assert len(lobby) == 1
    assert lobby.status("g4", T0 + 1200).state == "expired"
    with pytest.raises(LobbyError) as err:
        lobby.status("g1", T0 + 1200)
    assert err.value.code == "unknown_guest"


# --- names -----------------------------------------------------------------------------------------


def test_duplicate_names_get_a_suffix() -> None:
    lobby = make_lobby()
    names = [lobby.arrive(LINK, n, T0).name for n in ["Ann", "Ann", "ann", " ANN ", "Ann (2)"]]
    assert names == ["Ann", "Ann (2)", "ann (3)", "ANN (4)", "Ann (2) (2)"]
    assert lobby.arrive(LINK2, "Ann", T0).name == "Ann"  # another room: no clash
    assert lobby.admit(ROOM, "ann (3)", MOD, T0).ticket.guest_id == "g3"


def test_name_freed_after_expiry_or_denial() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    lobby.arrive(LINK, "Bob", T0 + 300)
    lobby.deny(ROOM, "Bob", MOD, T0 + 301)
    assert lobby.arrive(LINK, "Bob", T0 + 302).name == "Bob"  # a denied guest holds no name
    assert lobby.arrive(LINK, "Ann", T0 + 599).name == "Ann (2)"
    assert lobby.arrive(LINK, "Ann", T0 + 600).name == "Ann"  # the first Ann stopped waiting
    assert lobby.status("g1", T0 + 600).state == "expired"


def test_admitted_guest_keeps_its_name() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    lobby.admit(ROOM, "Ann", MOD, T0 + 1)
    assert lobby.arrive(LINK, "Ann", T0 + 2).name == "Ann (2)"
    assert lobby.arrive(LINK, "Ann", T0 + 700).name == "Ann"  # both gone by then


def test_long_duplicate_name_is_cut_to_fit() -> None:
    lobby = make_lobby()
    long = "x" * MAX_NAME_CHARS
    lobby.arrive(LINK, long, T0)
    second = lobby.arrive(LINK, long, T0).name
    assert second == "x" * (MAX_NAME_CHARS - 4) + " (2)" and len(second) == MAX_NAME_CHARS


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Ann", "Ann"),
        ("  Ann Lee\t", "Ann Lee"),
        ("Zoë", "Zoë"),
        ("Zoe\u0308", "Zoë"),  # NFC
        ("李小龍", "李小龍"),
        ("😀", "😀"),
        ("a" * MAX_NAME_CHARS, "a" * MAX_NAME_CHARS),
    ],
)
def test_valid_names(raw: str, name: str) -> None:
    assert validate_name(raw) == name


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "\t\n",
        "a" * (MAX_NAME_CHARS + 1),
        "Ann\nBob",
        "Ann\x00",
        "Ann\x1b[31m",
        "Ann\x7f",
        "Ann\u202egnp.exe",  # bidi override
        "An\u200bn",  # zero-width space
        "Ann\u2028Bob",  # line separator
        "\ue000",  # private use
        None,
    ],
)
def test_invalid_names(raw: str) -> None:
    lobby = make_lobby()
    with pytest.raises(LobbyError) as err:
        lobby.arrive(LINK, raw, T0)
    assert err.value.code == "invalid_name"
    assert len(lobby) == 0


# --- lookup errors ---------------------------------------------------------------------------------


def test_unknown_name_or_id() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    for text in ["Bob", "g9", "", "An"]:
        with pytest.raises(LobbyError) as err:
            lobby.admit(ROOM, text, MOD, T0)
        assert err.value.code == "unknown_guest"
    with pytest.raises(LobbyError) as err:
        lobby.status("nope", T0)
    assert err.value.code == "unknown_guest"


def test_wrong_room() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)
    with pytest.raises(LobbyError) as err:
        lobby.admit(ROOM2, "g1", MOD, T0)
    assert err.value.code == "wrong_room"
    with pytest.raises(LobbyError) as err:  # names are per room: just unknown there
        lobby.deny(ROOM2, "Ann", MOD, T0)
    assert err.value.code == "unknown_guest"
    assert lobby.status("g1", T0).state == "waiting"


def test_other_rooms_id_that_is_a_name_here() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK2, "Ann", T0)  # g1 in ROOM2
    lobby.arrive(LINK, "g1", T0)  # g2 in ROOM, named "g1"
    assert lobby.admit(ROOM, "g1", MOD, T0).ticket.guest_id == "g2"
    assert lobby.status("g1", T0).state == "waiting"


def test_ambiguous_name_and_id() -> None:
    lobby = make_lobby()
    lobby.arrive(LINK, "Ann", T0)  # g1
    lobby.arrive(LINK, "g1", T0)  # g2, named like g1's ID
    with pytest.raises(LobbyError) as err:
        lobby.admit(ROOM, "g1", MOD, T0)
    assert err.value.code == "ambiguous_name"
    assert lobby.status("g1", T0).state == "waiting" and lobby.status("g2", T0).state == "waiting"
    assert lobby.admit(ROOM, "g2", MOD, T0).ticket.name == "g1"  # the unambiguous ID still works


# --- limits ----------------------------------------------------------------------------------------


def test_room_limit() -> None:
    lobby = make_lobby(max_waiting_per_room=3)
    for n in range(3):
        lobby.arrive(LINK, f"G{n}", T0)
    with pytest.raises(LobbyError) as err:
        lobby.arrive(LINK, "G3", T0)
    assert err.value.code == "room_full"
    assert lobby.arrive(LINK2, "Other", T0).room_id == ROOM2  # other rooms unaffected
    lobby.admit(ROOM, "G0", MOD, T0)  # admitted guests do not count as waiting
    assert lobby.arrive(LINK, "G3", T0).state == "waiting"
    assert lobby.arrive(LINK, "G4", T0 + 600).state == "waiting"  # the others have expired


def test_total_limit() -> None:
    lobby = make_lobby(max_active=2)
    lobby.arrive(LINK, "A", T0)
    lobby.arrive(LINK2, "B", T0)
    lobby.admit(ROOM, "A", MOD, T0)
    with pytest.raises(LobbyError) as err:  # waiting and admitted guests both count
        lobby.arrive(LINK2, "C", T0)
    assert err.value.code == "lobby_full"
    lobby.deny(ROOM2, "B", MOD, T0)
    assert lobby.arrive(LINK2, "C", T0).state == "waiting"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_wait_s": 0},
        {"admission_valid_s": -1},
        {"keep_s": -1},
        {"max_waiting_per_room": 0},
        {"max_active": 0},
    ],
)
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_lobby(**kwargs)


def test_default_ids_are_random() -> None:
    lobby = Lobby()
    a = lobby.arrive(LINK, "A", T0).guest_id
    b = lobby.arrive(LINK, "B", T0).guest_id
    assert a != b and len(a) >= 32
