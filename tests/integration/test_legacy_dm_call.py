"""1:1 calls with the bot from a legacy client, end to end: real Synapse, the real service, real media.

The acceptance test of the DM path: a client written directly on nio + aiortc from the spec
(``legacy_client.py``, nothing of ``visio_matrix`` in its signaling) calls the bot in its encrypted DM
with it, joins the conference of a room where two other participants publish a tone and a colour, and
receives one audio and one video track (the MCU mix) whose content shows both of them. Also: the bot's
ring answered by that client (``!visio join``), and an invite that expired while the service was down
is ignored after the restart (Synapse delivers the backlog) while a fresh one is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import pytest_asyncio
from aiortc import RTCSessionDescription
from legacy_client import LegacyCall, LegacyClient, SeenEvent, new_peer
from synapse_fixtures import PASSWORD, ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.calls.hub_api import Identity, Joined
from visio_matrix.client.media import ColorVideoTrack, ToneAudioTrack
from visio_matrix.devstack.user import MatrixUser
from visio_matrix.relay.api import Negotiated

pytestmark = [pytest.mark.synapse, pytest.mark.media]

PUBLISHERS = {"alice": (440.0, (230, 30, 30)), "bob": (1250.0, (30, 220, 30))}
CAROL = (2500.0, (30, 30, 230))


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    return await service_stack(synapse_factory, tmp_path_factory, "legacy-dm")


async def legacy(stack: ServiceStack, prefix: str) -> LegacyClient:
    """A fresh user on the legacy (spec-only) client."""
    user_id = await stack.register(prefix)
    return await LegacyClient.login(stack.hs.base_url, user_id, PASSWORD, stack.workdir / "legacy" / user_id)


def bot_said(bot: str, prefix: str) -> Any:
    return lambda m: m.sender == bot and (m.body or "").startswith(prefix)


class Publisher:
    """A participant joined straight through the hub (not the path under test): a tone and a colour."""

    def __init__(self, tone: float, rgb: tuple[int, int, int]) -> None:
        self.pc = new_peer()
        self.pc.addTrack(ToneAudioTrack(tone))
        self.pc.addTrack(ColorVideoTrack(rgb))
        self.joined: Joined | None = None
        self._service: Service | None = None
        self._ready = asyncio.Event()

    async def join(self, service: Service, room_id: str, user_id: str) -> None:
        self._service = service
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.joined = await service.hub.join(
            room_id,
            Identity(user_id, "PUBLISHER"),
            self,
            transport="todevice",
            offer_sdp=self.pc.localDescription.sdp,
        )
        self._ready.set()
        await self.pc.setRemoteDescription(RTCSessionDescription(self.joined.negotiated.sdp, "answer"))

    async def send_offer(self, negotiated: Negotiated) -> None:
        """The relay renegotiates (someone joined): answer like any client would."""
        await self._ready.wait()
        assert self.joined is not None and self._service is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(negotiated.sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self._service.hub.accept_answer(self.joined.participant_id, self.pc.localDescription.sdp)

    async def closed(self, reason: str) -> None:
        pass

    async def close(self) -> None:
        await self.pc.close()


async def conference_room(
    stack: ServiceStack, service: Service, carol: LegacyClient
) -> tuple[str, list[MatrixUser], list[Publisher]]:
    """An encrypted room with alice, bob, carol and the bot, a call started, alice and bob publishing."""
    alice, bob = await stack.new_user("alice"), await stack.new_user("bob")
    room_id = await alice.create_room(
        "legacy call room", invite=[service.bot_user_id, bob.user_id, carol.user_id], encrypted=True
    )
    await bob.join(room_id)
    await carol.join(room_id)
    await alice.wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)
    await alice.wait_for_message(room_id, bot_said(service.bot_user_id, "Hello!"), timeout=30)
    await alice.send_text(room_id, "!visio start")
    await alice.wait_for_message(room_id, bot_said(service.bot_user_id, "📞 Call started"), timeout=30)
    publishers = []
    for user, (tone, rgb) in zip((alice, bob), PUBLISHERS.values(), strict=True):
        publisher = Publisher(tone, rgb)
        await publisher.join(service, room_id, user.user_id)
        publishers.append(publisher)
    return room_id, [alice, bob], publishers


async def dm_with_bot(carol: LegacyClient, bot: str) -> str:
    room_id = await carol.create_room("bot", [bot], direct=True)
    await carol.wait(lambda: carol.members.get((room_id, bot)) == "join", 30, "the bot in the DM")
    return room_id


def close_to(colour: tuple[int, int, int], wanted: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 60 for a, b in zip(colour, wanted, strict=True))


async def wait_for_mix(call: LegacyCall, timeout: float = 30) -> None:
    """Both publishers heard (their tones) and seen (their colours) in the one mixed stream pair."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tones_ok = all(call.sink.band(tone) > 0.05 for tone, _ in PUBLISHERS.values())
        colours = call.sink.colours()
        colours_ok = all(any(close_to(c, rgb) for c in colours) for _, rgb in PUBLISHERS.values())
        if tones_ok and colours_ok:
            return
        await asyncio.sleep(0.25)
    bands = {name: round(call.sink.band(tone), 3) for name, (tone, _) in PUBLISHERS.items()}
    raise AssertionError(
        f"mix incomplete after {timeout}s: kinds {call.sink.kinds}, audio bands {bands}, "
        f"pictures {call.sink.pictures}, colours {call.sink.colours()}"
    )


def from_bot(bot: str, event_type: str, call_id: str | None = None) -> Any:
    def match(e: SeenEvent) -> bool:
        return (
            e.sender == bot
            and e.type == event_type
            and (call_id is None or e.content.get("call_id") == call_id)
        )

    return match


async def test_legacy_client_calls_the_bot_and_receives_the_mix(
    stack: ServiceStack, service: Service
) -> None:
    carol = await legacy(stack, "carol")
    users: list[MatrixUser] = []
    publishers: list[Publisher] = []
    call: LegacyCall | None = None
    try:
        room_id, users, publishers = await conference_room(stack, service, carol)
        dm = await dm_with_bot(carol, service.bot_user_id)
        call = LegacyCall(carol, dm, *CAROL)
        answer = await call.place(invitee=service.bot_user_id)
        # Spec fields of the bot's answer, Megolm-encrypted in the encrypted DM.
        assert answer.encrypted
        assert answer.content["version"] == "1" and isinstance(answer.content["party_id"], str)
        assert answer.content["answer"]["type"] == "answer"
        end = await carol.wait_event(dm, from_bot(service.bot_user_id, "m.call.candidates", call.call_id), 30)
        assert end.content["candidates"][-1]["candidate"] == ""  # the bot's end-of-candidates

        await wait_for_mix(call)
        assert sorted(call.sink.kinds) == ["audio", "video"]  # one mixed audio, one composite video
        # Carol is in the room's conference, through the DM transport, as an MCU participant.
        [view] = [p for p in service.hub.participants(room_id) if p.identity.user_id == carol.user_id]
        assert view.transport == "dm" and view.identity.device_id == f"dm:{call.party_id}"

        await call.hangup()
        for _ in range(100):
            if not any(p.identity.user_id == carol.user_id for p in service.hub.participants(room_id)):
                break
            await asyncio.sleep(0.1)
        assert not any(p.identity.user_id == carol.user_id for p in service.hub.participants(room_id))
    finally:
        if call is not None:
            await call.close()
        for publisher in publishers:
            await publisher.close()
        for user in users:
            await user.close()
        await carol.close()


async def test_the_bots_ring_answered_by_a_legacy_client(stack: ServiceStack, service: Service) -> None:
    carol = await legacy(stack, "carol")
    users: list[MatrixUser] = []
    publishers: list[Publisher] = []
    call: LegacyCall | None = None
    try:
        room_id, users, publishers = await conference_room(stack, service, carol)
        dm = await dm_with_bot(carol, service.bot_user_id)
        await carol.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "!visio join"})
        invite = await carol.wait_event(
            dm, from_bot(service.bot_user_id, "m.call.invite"), 30, "the bot's ring"
        )
        assert invite.encrypted
        assert invite.content["invitee"] == carol.user_id and invite.content["lifetime"] == 60_000
        assert invite.content["version"] == "1" and invite.content["offer"]["type"] == "offer"
        call = LegacyCall(carol, dm, *CAROL, call_id=invite.content["call_id"])
        await call.answer(invite)
        select = await carol.wait_event(
            dm, from_bot(service.bot_user_id, "m.call.select_answer", call.call_id), 30
        )
        assert select.content["selected_party_id"] == call.party_id
        await wait_for_mix(call)
        assert sorted(call.sink.kinds) == ["audio", "video"]
    finally:
        if call is not None:
            await call.close()
        for publisher in publishers:
            await publisher.close()
        for user in users:
            await user.close()
        await carol.close()


async def test_invite_expired_while_the_service_was_down_is_ignored(
    stack: ServiceStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="visio_matrix.calls.dm_calls")
    svc = stack.service()
    await svc.start()
    carol = await legacy(stack, "carol")
    users: list[MatrixUser] = []
    publishers: list[Publisher] = []
    calls: list[LegacyCall] = []
    try:
        room_id, users, publishers = await conference_room(stack, svc, carol)
        dm = await dm_with_bot(carol, svc.bot_user_id)
        for p in publishers:
            await p.close()
        await svc.stop()
        # While the service is down: an invite with a 3 s lifetime, which is over when Synapse retries.
        stale = LegacyCall(carol, dm, *CAROL)
        calls.append(stale)
        await stale.pc.setLocalDescription(await stale.pc.createOffer())
        await carol.send(
            dm,
            "m.call.invite",
            {
                "call_id": stale.call_id,
                "party_id": stale.party_id,
                "version": "1",
                "lifetime": 3000,
                "offer": {"type": "offer", "sdp": stale.pc.localDescription.sdp},
            },
        )
        await asyncio.sleep(4)
        svc = stack.service()
        await svc.start()  # its start-up ping makes Synapse deliver the backlog at once
        # The room's conference ended with the service stop? Start one again if needed, then call afresh.
        if await svc.store.get_active_conference(room_id) is None:
            await users[0].send_text(room_id, "!visio start")
            await users[0].wait_for_message(
                room_id, lambda m: m.sender == svc.bot_user_id and "Call started" in (m.body or ""), 30
            )
        fresh = LegacyCall(carol, dm, *CAROL)
        calls.append(fresh)
        await fresh.place(invitee=svc.bot_user_id)  # answered: the bot was listening
        # The stale invite may have waited for its room key: wait until nothing is left undecrypted.
        for _ in range(100):
            if svc.bot.pending_count == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        bot_events = [e for e in carol.events.get(dm, []) if e.sender == svc.bot_user_id]
        assert not [e for e in bot_events if e.content.get("call_id") == stale.call_id], bot_events
        # It did reach the bot after the restart, and was dropped for being past its lifetime.
        assert any(
            stale.call_id in r.getMessage() and "invite expired" in r.getMessage() for r in caplog.records
        ), "the stale invite never reached the DM transport"
    finally:
        for c in calls:
            await c.close()
        for user in users:
            await user.close()
        await carol.close()
        await svc.stop()
