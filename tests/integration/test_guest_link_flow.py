"""Guests by link, end to end on the server side: real Synapse, the real service, an encrypted room.

A member types ``!visio link``; the (decrypted) reply carries the link; a guest arrives through the
HTTP API; the bot says "<name> is waiting"; the member types ``!visio admit <name>``; the guest's
status then carries a LiveKit token, with which a LiveKit-protocol client (aiortc) joins ``/rtc/v1``
as ``guest:...`` and exchanges media with a member's LiveKit client. A denied guest gets no token.

The guest routes are mounted on a separate aiohttp server here (``app.py`` does not serve them yet).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from livekit.protocol import models
from lk_test_client import LkClient
from synapse_fixtures import ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.client.media import ColorVideoTrack
from visio_matrix.focus.identity import LEGACY_SLOT_ID, livekit_room_name
from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token
from visio_matrix.web.guest_api import GuestService

pytestmark = [pytest.mark.synapse, pytest.mark.media]

RED, GREEN = (230, 20, 20), (20, 230, 20)
LINK = re.compile(r"/guest/([A-Za-z0-9_.-]+)")


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    return await service_stack(synapse_factory, tmp_path_factory, "guests")


@pytest_asyncio.fixture
async def guests(service: Service) -> AsyncIterator[tuple[GuestService, str]]:
    """The service's own guest service (app.py wires it: bot commands, notices, /guest routes)."""
    assert service.config.guests.enabled, "generate-config writes a guest link signing key"
    cfg = service.config.appservice
    yield service.guests, f"http://{cfg.host}:{cfg.port}"


def said(bot: str, prefix: str) -> Any:
    return lambda m: m.sender == bot and (m.body or "").startswith(prefix)


def looks(record: Any, rgb: tuple[int, int, int]) -> bool:
    return record.last_rgb is not None and all(
        abs(a - b) < 40 for a, b in zip(record.last_rgb, rgb, strict=True)
    )


async def test_member_links_admits_a_guest_who_joins_the_call_and_denies_another(
    stack: ServiceStack, service: Service, guests: tuple[GuestService, str]
) -> None:
    _, base = guests
    bot = service.bot_user_id
    alice = await stack.new_user("alice")
    clients: list[LkClient] = []
    async with aiohttp.ClientSession() as http:
        try:
            room_id = await alice.create_room("guest room", invite=[bot], encrypted=True)
            await alice.wait_for_membership(room_id, bot, "join", timeout=30)
            await alice.wait_for_message(room_id, said(bot, "Hello!"), timeout=30)
            await alice.send_text(room_id, "!visio start")
            await alice.wait_for_message(room_id, said(bot, "📞 Call started"), timeout=30)

            await alice.send_text(room_id, "!visio link")
            reply = await alice.wait_for_message(room_id, said(bot, "Guest link for this room"), timeout=30)
            match = LINK.search(reply.body or "")
            assert match is not None, reply.body
            token = match.group(1)
            assert reply.body is not None and service.config.focus.public_url in reply.body

            page = await http.get(f"{base}/guest/{token}")
            assert page.status == 200
            arrived = await (
                await http.post(f"{base}/guest/api/arrive", json={"token": token, "name": "Ann"})
            ).json()
            assert arrived["state"] == "waiting"
            other = await (
                await http.post(f"{base}/guest/api/arrive", json={"token": token, "name": "Gus"})
            ).json()
            await alice.wait_for_message(
                room_id, said(bot, "Ann is waiting (type !visio admit Ann"), timeout=30
            )
            await alice.wait_for_message(room_id, said(bot, "Gus is waiting"), timeout=30)
            status = await (await http.get(f"{base}/guest/api/status/{arrived['guest_id']}")).json()
            assert status["state"] == "waiting" and "jwt" not in status

            await alice.send_text(room_id, "!visio deny Gus")
            await alice.wait_for_message(room_id, said(bot, "Gus was turned away"), timeout=30)
            denied = await (await http.get(f"{base}/guest/api/status/{other['guest_id']}")).json()
            assert denied == {"state": "denied", "name": "Gus"}

            await alice.send_text(room_id, "!visio admit Ann")
            await alice.wait_for_message(room_id, said(bot, f"Ann was let in by {alice.user_id}"), timeout=30)
            status = await (await http.get(f"{base}/guest/api/status/{arrived['guest_id']}")).json()
            assert status["state"] == "admitted" and status["jwt"]

            guest = LkClient("ann", status["url"], status["jwt"], http)
            clients.append(guest)
            join = await guest.connect(timeout=10)
            assert join.participant.identity.startswith("guest:") and join.participant.name == "Ann"
            views = service.hub.participants(room_id)
            assert [v.identity.user_id for v in views] == [join.participant.identity]
            assert views[0].transport == "livekit"

            cfg = service.config.focus
            member_token = issue_token(
                api_key=cfg.api_key,
                api_secret=cfg.api_secret,
                identity=f"{alice.user_id}:LK",
                grants=VideoGrants(room=livekit_room_name(room_id, LEGACY_SLOT_ID)),
                visio=VisioClaim(alice.user_id, "LK", room_id, LEGACY_SLOT_ID, can_open=True),
                now=time.time(),
                lifetime_s=600,
            )
            member = LkClient("alice", status["url"], member_token, http)
            clients.append(member)
            member_join = await member.connect(timeout=10)
            await guest.publish(ColorVideoTrack(RED), models.CAMERA)
            await member.publish(ColorVideoTrack(GREEN), models.CAMERA)
            guest_sid, member_sid = join.participant.sid, member_join.participant.sid
            await member.wait_for(
                lambda: bool(member.receiving(guest_sid, "video", 10)), 30, "the guest's video"
            )
            await guest.wait_for(
                lambda: bool(guest.receiving(member_sid, "video", 10)), 30, "the member's video"
            )
            assert looks(member.receiving(guest_sid, "video")[0], RED)
            assert looks(guest.receiving(member_sid, "video")[0], GREEN)
        finally:
            for c in clients:
                await c.close()
            await alice.close()
