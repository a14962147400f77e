"""The room bot's decisions with an in-memory Matrix device and a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from visio_matrix.appservice.events import RoomEvent
from visio_matrix.calls.hub import ConferenceHub
from visio_matrix.calls.room_bot import RoomBot, format_duration
from visio_matrix.clock import FakeClock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.crypto.bot_device import Decrypted, Undecryptable
from visio_matrix.metrics import Metrics
from visio_matrix.storage import Store, open_store

BOT = "@visio:hs"
ROOM = "!room:hs"


class FakeIO:
    user_id = BOT

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.joined: list[str] = []
        self.left: list[str] = []
        self.keys_available: set[str] = set()
        self.state: list[dict[str, Any]] = [
            {"type": "m.room.create", "sender": "@creator:hs", "content": {"room_version": "12"}},
            {"type": "m.room.power_levels", "sender": "@creator:hs", "content": {"users": {"@mod:hs": 50}}},
        ]

    async def join(self, room_id: str) -> None:
        self.joined.append(room_id)

    async def leave(self, room_id: str) -> None:
        self.left.append(room_id)

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str:
        self.sent.append((room_id, content))
        return f"$sent{len(self.sent)}"

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        return self.state

    def decrypt(self, event: RoomEvent) -> Decrypted | Undecryptable:
        session = str(event.content.get("session_id"))
        if session not in self.keys_available:
            return Undecryptable("no session", waiting_for_keys=True)
        return Decrypted(
            "m.room.message", {"msgtype": "m.text", "body": event.content["plain"]}, "curve", True
        )

    async def wait_for_sync(self, timeout: float) -> bool:
        return True

    def bodies(self) -> list[str]:
        return [c["body"] for _, c in self.sent]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    await s.close()


class NoMembers:
    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return False


def hub_for(store: Store, policy: PolicyConfig, clock: FakeClock) -> ConferenceHub:
    """A real hub; these tests never add participants, so it never touches its relay."""
    return ConferenceHub(None, asyncio.Queue(), store, NoMembers(), policy, clock, Metrics())  # type: ignore[arg-type]


def make_bot(io: FakeIO, store: Store, clock: FakeClock) -> RoomBot:
    policy = PolicyConfig(allowed_servers=("hs", "*.gouv.fr"), start_power_level=0, stop_power_level=50)
    return RoomBot(
        io, store, policy, clock, Metrics(), pending_ttl=60, conferences=hub_for(store, policy, clock)
    )


_n = 0


def msg(sender: str, body: str, room: str = ROOM) -> RoomEvent:
    global _n
    _n += 1
    return RoomEvent(f"$m{_n}", room, sender, "m.room.message", {"msgtype": "m.text", "body": body}, 0)


async def test_start_status_stop_cycle(store: Store) -> None:
    io, clock = FakeIO(), FakeClock()
    bot = make_bot(io, store, clock)
    await bot.on_room_event(msg("@user:hs", "!visio start"))
    assert "Call started by @user:hs" in io.bodies()[-1]
    active = await store.get_active_conference(ROOM)
    assert active is not None and active.started_by == "@user:hs"
    assert active.state_event_id == "$sent1"

    await bot.on_room_event(msg("@user:hs", "!visio start"))
    assert "already running" in io.bodies()[-1]

    clock.advance(125)
    await bot.on_room_event(msg("@user:hs", "!visio status"))
    assert "Call running for 2m05s, started by @user:hs" in io.bodies()[-1]

    await bot.on_room_event(msg("@user:hs", "!visio stop"))
    assert io.bodies()[-1] == "Sorry: Ending a call needs power level 50 in this room; you have 0."
    assert await store.get_active_conference(ROOM) is not None

    await bot.on_room_event(msg("@mod:hs", "!visio stop"))
    assert io.bodies()[-1] == "📴 Call ended by @mod:hs after 2m05s. Participants: nobody joined."
    assert await store.get_active_conference(ROOM) is None

    await bot.on_room_event(msg("@creator:hs", "!visio stop"))
    assert io.bodies()[-1] == "No call is running in this room."
    # every reply is threaded to the command it answers
    assert all("m.in_reply_to" in c.get("m.relates_to", {}) for _, c in io.sent)


async def test_start_needs_power_level(store: Store) -> None:
    io = FakeIO()
    policy, clock = PolicyConfig(("hs",), start_power_level=50), FakeClock()
    bot = RoomBot(io, store, policy, clock, Metrics(), conferences=hub_for(store, policy, clock))
    await bot.on_room_event(msg("@user:hs", "!visio start"))
    assert io.bodies() == ["Sorry: Starting a call needs power level 50 in this room; you have 0."]
    await bot.on_room_event(msg("@creator:hs", "!visio start"))  # privileged creator (room v12)
    assert "Call started" in io.bodies()[-1]


async def test_users_of_other_servers_get_a_clear_refusal(store: Store) -> None:
    io = FakeIO()
    bot = make_bot(io, store, FakeClock())
    await bot.on_room_event(msg("@eve:evil.example", "!visio start"))
    assert io.bodies() == ["Sorry, users of your homeserver may not use this service."]
    await bot.on_room_event(msg("@agent:interieur.gouv.fr", "!visio help"))
    assert io.bodies()[-1].startswith("Visio commands:")
    assert await store.get_active_conference(ROOM) is None


async def test_help_unknown_and_chatter(store: Store) -> None:
    io = FakeIO()
    bot = make_bot(io, store, FakeClock())
    await bot.on_room_event(msg("@user:hs", "hello everyone"))
    await bot.on_room_event(msg(BOT, "!visio start"))  # the bot never answers itself
    assert io.sent == []
    await bot.on_room_event(msg("@user:hs", "!visio frobnicate"))
    assert io.bodies()[-1].startswith("Unknown command 'frobnicate'.")


async def test_invites_follow_policy(store: Store) -> None:
    io = FakeIO()
    bot = make_bot(io, store, FakeClock())

    def invite(sender: str, room: str) -> RoomEvent:
        return RoomEvent(
            f"$i{room}", room, sender, "m.room.member", {"membership": "invite"}, 0, state_key=BOT
        )

    await bot.on_room_event(invite("@user:hs", "!a:hs"))
    await bot.on_room_event(invite("@eve:evil.example", "!b:hs"))
    assert io.joined == ["!a:hs"]
    assert io.left == ["!b:hs"]


async def test_encrypted_command_waits_for_its_key(store: Store) -> None:
    io, clock = FakeIO(), FakeClock()
    bot = make_bot(io, store, clock)
    enc = RoomEvent(
        "$enc", ROOM, "@user:hs", "m.room.encrypted", {"session_id": "s1", "plain": "!visio start"}, 0
    )
    gone = RoomEvent(
        "$gone", ROOM, "@user:hs", "m.room.encrypted", {"session_id": "s2", "plain": "!visio help"}, 0
    )
    await bot.on_room_event(enc)
    await bot.on_room_event(gone)
    assert io.sent == [] and bot.pending_count == 2
    io.keys_available.add("s1")
    await bot.retry_pending()
    assert "Call started" in io.bodies()[-1]
    assert bot.pending_count == 1
    clock.advance(61)
    await bot.retry_pending()
    assert bot.pending_count == 0  # given up after the TTL, never answered
    assert len(io.sent) == 1


@pytest.mark.parametrize(
    ("ms", "text"), [(0, "0m00s"), (59_999, "0m59s"), (61_000, "1m01s"), (3_725_000, "1h02m05s")]
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text
