"""The focus token service against a real Synapse: OpenID tokens issued by the homeserver, checked
over its federation userinfo endpoint, room membership read from real room state.

Synapse runs with the devstack's MatrixRTC options (MSC4143 transport discovery advertising the
focus, delayed events, ``openid`` on the client listener). The bot is not running in these tests,
so the ``MembershipChecker`` reads the room's state through the client API as the room's creator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from synapse_fixtures import SynapseFactory

from visio_matrix.appservice.http import matrix_errors_middleware
from visio_matrix.clock import SystemClock
from visio_matrix.config import Config, generate_config_text, parse_config_text
from visio_matrix.devstack.synapse import LocalSynapse
from visio_matrix.devstack.user import MatrixUser
from visio_matrix.focus.jwt import verify_token
from visio_matrix.focus.rooms import RoomBinding
from visio_matrix.focus.tokens import TokenService, focus_routes, token_service_from_config
from visio_matrix.storage import Store, open_store, sqlite_url

pytestmark = pytest.mark.synapse

PASSWORD = "correct horse battery staple"
FOCUS_URL = "https://visio.focus.test"
# Another server name the policy allows, whose OpenID tokens are checked at our Synapse: it can
# only ever answer for its own users, which must not pass as users of this name.
OTHER_SERVER = "other.test"


@dataclass
class World:
    hs: LocalSynapse
    alice: MatrixUser  # created the room
    bob: MatrixUser  # joined it
    carol: MatrixUser  # never in it
    room_id: str
    workdir: Path


_world: World | None = None


async def _new_user(hs: LocalSynapse, prefix: str, workdir: Path) -> MatrixUser:
    user_id = await hs.register_user(f"{prefix}{uuid.uuid4().hex[:6]}", PASSWORD)
    return await MatrixUser.login(hs.base_url, user_id, PASSWORD, workdir / "users" / user_id)


@pytest_asyncio.fixture
async def world(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> World:
    """One Synapse (with the MatrixRTC options), three users and a room, shared by this module."""
    global _world
    if _world is None or not _world.hs.running:
        workdir = tmp_path_factory.mktemp("focus")
        hs = await synapse_factory.start(rtc_focus_url=FOCUS_URL)
        alice = await _new_user(hs, "alice", workdir)
        bob = await _new_user(hs, "bob", workdir)
        carol = await _new_user(hs, "carol", workdir)
        room_id = await alice.create_room("focus room", invite=[bob.user_id], encrypted=False)
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, bob.user_id, "join", timeout=30)
        # The MatrixUser sync loops are not needed any more: only their access tokens are.
        for user in (alice, bob, carol):
            await user.close()
        _world = World(hs, alice, bob, carol, room_id, workdir)
    return _world


class CreatorView:
    """Membership as the room's creator sees it in the room state (``GET /state/m.room.member/...``)."""

    def __init__(self, base_url: str, access_token: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {access_token}"}

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        url = f"{self.base_url}/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}"
        async with aiohttp.ClientSession() as http, http.get(url, headers=self.headers) as resp:
            if resp.status == 404:
                return False
            resp.raise_for_status()
            return bool((await resp.json()).get("membership") == "join")


def make_config(hs: LocalSynapse, tmp: Path) -> Config:
    text = generate_config_text(
        server_name=hs.server_name,
        homeserver_url=hs.base_url,
        allowed_servers=[hs.server_name, OTHER_SERVER],
        focus_public_url=FOCUS_URL,
    )
    config, _ = parse_config_text(text, tmp)
    focus = replace(config.focus, homeserver_urls={OTHER_SERVER: hs.base_url})
    return replace(config, focus=focus)


@dataclass
class Focus:
    client: TestClient
    config: Config
    store: Store
    service: TokenService


@pytest_asyncio.fixture
async def focus(world: World, aiohttp_client: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Focus]:
    config = make_config(world.hs, tmp_path)
    store = await open_store(sqlite_url(tmp_path / "visio.db"))
    service = token_service_from_config(
        config, store, CreatorView(world.hs.base_url, world.alice.access_token), SystemClock()
    )
    app = web.Application(middlewares=[matrix_errors_middleware])
    app.add_routes(focus_routes(service))
    client = await aiohttp_client(app)
    try:
        yield Focus(client, config, store, service)
    finally:
        await service.close()
        await store.close()


async def openid(user: MatrixUser) -> dict[str, Any]:
    """A fresh OpenID token from the homeserver (the user's sync loop is not running)."""
    url = f"{user.client.homeserver}/_matrix/client/v3/user/{quote(user.user_id)}/openid/request_token"
    headers = {"Authorization": f"Bearer {user.access_token}"}
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers, json={}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    assert set(body) == {"access_token", "token_type", "matrix_server_name", "expires_in"}
    return body


def lk_hash(*values: str) -> str:
    """lk-jwt-service's hash: unpadded base64 of SHA-256 of Go's JSON array (plain ASCII here)."""
    raw = ("[" + ",".join(f'"{v}"' for v in values) + "]").encode()
    return base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def get_token_body(
    world: World, user: MatrixUser, token: dict[str, Any], member_id: str = "m-1"
) -> dict[str, Any]:
    return {
        "room_id": world.room_id,
        "slot_id": "m.call#ROOM",
        "openid_token": token,
        "member": {"id": member_id, "claimed_user_id": user.user_id, "claimed_device_id": user.device_id},
    }


async def test_synapse_advertises_the_focus(world: World) -> None:
    url = f"{world.hs.base_url}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
    headers = {"Authorization": f"Bearer {world.alice.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "rtc_transports": [{"type": "livekit", "livekit_service_url": FOCUS_URL}]
        }


async def test_get_token_for_a_member(world: World, focus: Focus) -> None:
    token = await openid(world.alice)
    assert token["matrix_server_name"] == world.hs.server_name
    resp = await focus.client.post("/get_token", json=get_token_body(world, world.alice, token, "member-A"))
    body = await resp.json()
    assert resp.status == 200, body
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert body["url"] == "wss://visio.focus.test"
    claims = verify_token(body["jwt"], focus.config.focus.signing_keys(), SystemClock().wall_ms() / 1000)
    assert claims.identity == lk_hash(world.alice.user_id, world.alice.device_id, "member-A")
    room_name = lk_hash(world.room_id, "m.call#ROOM")
    assert claims.grants.room == room_name
    assert claims.visio.user_id == world.alice.user_id
    assert claims.visio.device_id == world.alice.device_id
    assert claims.visio.room_id == world.room_id
    assert claims.visio.can_open is True
    assert 3590 <= claims.expires_at - SystemClock().wall_ms() / 1000 <= 3600
    # The LiveKit room name was recorded in the real store.
    assert focus.service.rooms is not None
    assert await focus.store.get_state(f"focus.room.{room_name}") is not None
    assert await focus.service.rooms.lookup(room_name) == RoomBinding(world.room_id, "m.call#ROOM")


async def test_sfu_get_for_a_member(world: World, focus: Focus) -> None:
    body = {"room": world.room_id, "openid_token": await openid(world.bob), "device_id": world.bob.device_id}
    resp = await focus.client.post("/sfu/get", json=body)
    answer = await resp.json()
    assert resp.status == 200, answer
    claims = verify_token(answer["jwt"], focus.config.focus.signing_keys(), SystemClock().wall_ms() / 1000)
    assert claims.identity == f"{world.bob.user_id}:{world.bob.device_id}"
    assert claims.grants.room == lk_hash(world.room_id, "m.call#ROOM")
    assert claims.visio.user_id == world.bob.user_id


async def test_non_member_is_refused(world: World, focus: Focus) -> None:
    resp = await focus.client.post(
        "/get_token", json=get_token_body(world, world.carol, await openid(world.carol))
    )
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    body = {"room": world.room_id, "openid_token": await openid(world.carol), "device_id": "CAROLDEV"}
    resp = await focus.client.post("/sfu/get", json=body)
    assert resp.status == 403


async def test_token_of_another_user_is_refused(world: World, focus: Focus) -> None:
    # Carol's real token, presented as Bob (a member).
    body = get_token_body(world, world.bob, await openid(world.carol))
    resp = await focus.client.post("/get_token", json=body)
    assert resp.status == 401
    assert await resp.json() == {"errcode": "M_UNAUTHORIZED", "error": "The request could not be authorised."}


async def test_token_presented_for_another_server_is_refused(world: World, focus: Focus) -> None:
    """Alice's real token claimed to come from other.test: that server's answer (here our Synapse,
    which knows the token) names a user of another server, so it cannot vouch for it."""
    token = {**(await openid(world.alice)), "matrix_server_name": OTHER_SERVER}
    body = {"room": world.room_id, "openid_token": token, "device_id": world.alice.device_id}
    resp = await focus.client.post("/sfu/get", json=body)
    assert resp.status == 401


async def test_garbage_and_expired_openid_tokens_are_refused(world: World, focus: Focus) -> None:
    garbage = {**(await openid(world.alice)), "access_token": "not-a-token"}
    resp = await focus.client.post("/get_token", json=get_token_body(world, world.alice, garbage))
    assert resp.status == 401
    # A real token, expired in the homeserver's own database.
    token = await openid(world.alice)
    with sqlite3.connect(world.hs.database_path, timeout=30) as db:
        changed = db.execute(
            "UPDATE open_id_tokens SET ts_valid_until_ms = 1 WHERE token = ?", (token["access_token"],)
        ).rowcount
    assert changed == 1
    resp = await focus.client.post("/get_token", json=get_token_body(world, world.alice, token))
    assert resp.status == 401
    # The same flow with a fresh token works: the refusal was the expiry.
    resp = await focus.client.post(
        "/get_token", json=get_token_body(world, world.alice, await openid(world.alice))
    )
    assert resp.status == 200


async def test_server_not_in_policy_is_refused(world: World, focus: Focus) -> None:
    token = {**(await openid(world.alice)), "matrix_server_name": "not-allowed.test"}
    resp = await focus.client.post("/get_token", json=get_token_body(world, world.alice, token))
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"


@pytest.mark.parametrize(
    ("path", "data", "status", "errcode"),
    [
        ("/get_token", b"", 400, "M_NOT_JSON"),
        ("/get_token", b"{broken", 400, "M_NOT_JSON"),
        ("/get_token", json.dumps({"room_id": "!r:x", "unexpected": 1}).encode(), 400, "M_NOT_JSON"),
        ("/get_token", json.dumps({"room_id": "!r:x", "slot_id": "m.call#ROOM"}).encode(), 400, "M_BAD_JSON"),
        ("/sfu/get", json.dumps({"room": "!r:x"}).encode(), 400, "M_BAD_JSON"),
        ("/sfu/get", json.dumps({"room": 1}).encode(), 400, "M_NOT_JSON"),
    ],
)
async def test_malformed_bodies(focus: Focus, path: str, data: bytes, status: int, errcode: str) -> None:
    resp = await focus.client.post(path, data=data, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert (await resp.json())["errcode"] == errcode


@pytest.mark.parametrize("path", ["/sfu/get", "/get_token", "/delegate_delayed_leave"])
async def test_cors_preflight(focus: Focus, path: str) -> None:
    headers = {
        "Origin": "https://call.element.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    resp = await focus.client.options(path, headers=headers)
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
