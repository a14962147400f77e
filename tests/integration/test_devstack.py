"""The local stack itself, against real Synapse: boot, registration, E2EE users, restore, federation."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from nio import RoomGetStateEventResponse
from nio.crypto.memorystores import GroupSessionStore
from synapse_fixtures import SynapseFactory

from visio_matrix.devstack.synapse import LocalSynapse, SynapseError, free_port
from visio_matrix.devstack.user import MatrixUser, MatrixUserError, MessageView

pytestmark = pytest.mark.synapse

PASSWORD = "correct horse battery staple"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def new_user(hs: LocalSynapse, store_root: Path, prefix: str) -> MatrixUser:
    user_id = await hs.register_user(unique(prefix), PASSWORD)
    return await MatrixUser.login(hs.base_url, user_id, PASSWORD, store_root / user_id)


def stored_event_json(hs: LocalSynapse, event_id: str) -> dict[str, object]:
    with sqlite3.connect(f"file:{hs.database_path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT json FROM event_json WHERE event_id = ?", (event_id,)).fetchone()
    assert row is not None, f"{event_id} not in {hs.database_path}"
    stored: dict[str, object] = json.loads(row[0])
    return stored


def body_is(text: str) -> Callable[[MessageView], bool]:
    return lambda view: view.body == text


async def test_synapse_boots_and_registers_users(synapse: LocalSynapse) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{synapse.base_url}/_matrix/client/versions") as response:
            assert response.status == 200
            assert "versions" in await response.json()

    localpart = unique("Reg")
    user_id = await synapse.register_user(localpart, PASSWORD, displayname="Reg")
    assert user_id == f"@{localpart.lower()}:{synapse.server_name}"
    # Registering again is not an error: the existing user's ID comes back.
    assert await synapse.register_user(localpart, PASSWORD) == user_id

    async with aiohttp.ClientSession() as session:
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}}
        async with session.post(
            f"{synapse.base_url}/_matrix/client/v3/login", json={**login, "password": PASSWORD}
        ) as response:
            assert response.status == 200
        async with session.post(
            f"{synapse.base_url}/_matrix/client/v3/login", json={**login, "password": "wrong"}
        ) as response:
            assert response.status == 403


async def test_encrypted_room_exchange(synapse: LocalSynapse, tmp_path: Path) -> None:
    alice = await new_user(synapse, tmp_path, "alice")
    bob = await new_user(synapse, tmp_path, "bob")
    try:
        room_id = await alice.create_room("secret plans", invite=[bob.user_id])
        await bob.wait_for_membership(room_id, bob.user_id, "invite")
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, bob.user_id, "join")

        secret = f"the launch code is {uuid.uuid4().hex}"
        event_id = await alice.send_text(room_id, secret)
        received = await bob.wait_for_message(room_id, body_is(secret))
        assert received.event_id == event_id
        assert received.sender == alice.user_id
        assert received.encrypted and received.decrypted
        assert received.content["msgtype"] == "m.text"

        # What Synapse stored is ciphertext only.
        stored = stored_event_json(synapse, event_id)
        assert stored["type"] == "m.room.encrypted"
        assert secret not in json.dumps(stored)
        assert "launch code" not in json.dumps(stored)

        reply = f"ack {uuid.uuid4().hex}"
        await bob.send_text(room_id, reply)
        seen = await alice.wait_for_message(room_id, body_is(reply))
        assert seen.decrypted and seen.sender == bob.user_id

        # Events nio cannot parse after decryption still arrive, decrypted, with their raw content.
        candidates = {
            "call_id": uuid.uuid4().hex,
            "party_id": "p",
            "version": "1",
            "candidates": [{"candidate": ""}],
        }
        candidates_id = await alice.send_event(room_id, "m.call.candidates", candidates)
        assert stored_event_json(synapse, candidates_id)["type"] == "m.room.encrypted"
        call_event = await bob.wait_for_message(room_id, lambda v: v.event_id == candidates_id)
        assert call_event.type == "m.call.candidates"
        assert call_event.encrypted and call_event.decrypted
        assert call_event.content["candidates"] == [{"candidate": ""}]

        token = await bob.get_openid_token()
        assert token["matrix_server_name"] == synapse.server_name and token["access_token"]
    finally:
        await alice.close()
        await bob.close()


async def test_plain_room_power_levels_and_kick(synapse: LocalSynapse, tmp_path: Path) -> None:
    alice = await new_user(synapse, tmp_path, "alice")
    bob = await new_user(synapse, tmp_path, "bob")
    try:
        room_id = await alice.create_room("open", encrypted=False)
        await alice.invite(room_id, bob.user_id)
        await bob.wait_for_membership(room_id, bob.user_id, "invite")
        await bob.join(room_id)
        await alice.set_power_level(room_id, bob.user_id, 50)
        text = unique("hello ")
        await alice.send_text(room_id, text)
        seen: MessageView = await bob.wait_for_message(room_id, body_is(text))
        assert not seen.encrypted and not seen.decrypted

        levels = await bob.client.room_get_state_event(room_id, "m.room.power_levels")
        assert isinstance(levels, RoomGetStateEventResponse)
        assert levels.content["users"][bob.user_id] == 50

        await alice.kick(room_id, bob.user_id, reason="bye")
        await bob.wait_for_membership(room_id, bob.user_id, "leave")
        await alice.wait_for_membership(room_id, bob.user_id, "leave")
    finally:
        await alice.close()
        await bob.close()


async def test_restored_and_new_devices_decrypt(synapse: LocalSynapse, tmp_path: Path) -> None:
    alice = await new_user(synapse, tmp_path, "alice")
    bob = await new_user(synapse, tmp_path, "bob")
    bob_store = tmp_path / bob.user_id
    bob_again: MatrixUser | None = None
    bob_new: MatrixUser | None = None
    try:
        room_id = await alice.create_room("restart", invite=[bob.user_id])
        await bob.wait_for_membership(room_id, bob.user_id, "invite")
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, bob.user_id, "join")
        before = unique("before restart ")
        await alice.send_text(room_id, before)
        assert (await bob.wait_for_message(room_id, body_is(before))).decrypted

        device_id, token = bob.device_id, bob.access_token
        await bob.close()
        with pytest.raises(MatrixUserError, match="no E2EE store"):
            await MatrixUser.restore(synapse.base_url, bob.user_id, device_id, token, tmp_path / "empty")
        bob_again = await MatrixUser.restore(synapse.base_url, bob.user_id, device_id, token, bob_store)
        assert bob_again.device_id == device_id
        after = unique("after restart ")
        await alice.send_text(room_id, after)
        seen = await bob_again.wait_for_message(room_id, body_is(after))
        assert seen.decrypted and seen.sender == alice.user_id
        # The restored device still sends messages that Alice can decrypt.
        back = unique("restored says ")
        await bob_again.send_text(room_id, back)
        assert (await alice.wait_for_message(room_id, body_is(back))).decrypted

        # A fresh login is a new device; once Alice's client has its keys, it gets her room key too.
        bob_new = await MatrixUser.login(synapse.base_url, bob.user_id, PASSWORD, bob_store, "second")
        assert bob_new.device_id != device_id
        await alice.wait_for_device(bob.user_id, bob_new.device_id)
        later = unique("to both devices ")
        await alice.send_text(room_id, later)
        for device in (bob_again, bob_new):
            assert (await device.wait_for_message(room_id, body_is(later))).decrypted
    finally:
        for user in (alice, bob_again, bob_new):
            if user is not None:
                await user.close()


async def test_late_room_key_is_retried(synapse: LocalSynapse, tmp_path: Path) -> None:
    """An event whose Megolm key is not there yet is buffered undecrypted and decrypted when it comes."""
    alice = await new_user(synapse, tmp_path, "alice")
    bob = await new_user(synapse, tmp_path, "bob")
    try:
        room_id = await alice.create_room("late keys", invite=[bob.user_id])
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, bob.user_id, "join")
        first = unique("first ")
        event_id = await alice.send_text(room_id, first)
        assert (await bob.wait_for_message(room_id, body_is(first))).decrypted

        # Bob forgets the inbound session, so the next event (same session) can't be decrypted ...
        assert bob.client.olm is not None
        olm = bob.client.olm
        saved, olm.inbound_group_store = olm.inbound_group_store, GroupSessionStore()
        second = unique("second ")
        second_id = await alice.send_text(room_id, second)
        undecrypted = await bob.wait_for_message(room_id, lambda v: v.event_id == second_id)
        assert undecrypted.encrypted and not undecrypted.decrypted and undecrypted.body is None
        # ... until the key is back and the next sync retries it.
        olm.inbound_group_store = saved
        await alice.send_text(room_id, unique("nudge "))
        late = await bob.wait_for_message(room_id, lambda v: v.event_id == second_id and v.decrypted)
        assert late.body == second
        assert event_id != second_id
    finally:
        await alice.close()
        await bob.close()


async def test_two_homeservers_federate(synapse_factory: SynapseFactory, tmp_path: Path) -> None:
    hs_a = await synapse_factory.start(federation=True)
    hs_b = await synapse_factory.start(federation=True)
    assert hs_a.server_name != hs_b.server_name
    alice = await new_user(hs_a, tmp_path, "alice")
    bob = await new_user(hs_b, tmp_path, "bob")
    try:
        room_id = await alice.create_room("across servers", invite=[bob.user_id])
        await bob.wait_for_membership(room_id, bob.user_id, "invite", timeout=60)
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, bob.user_id, "join", timeout=60)
        await alice.wait_for_device(bob.user_id, bob.device_id, timeout=60)
        text = unique("over federation ")
        await alice.send_text(room_id, text)
        seen = await bob.wait_for_message(room_id, body_is(text), timeout=60)
        assert seen.decrypted and seen.sender == alice.user_id
        assert seen.sender.endswith(f":{hs_a.server_name}")
    finally:
        await alice.close()
        await bob.close()
        await hs_a.stop()
        await hs_b.stop()


async def test_appservice_registration_is_loaded_and_pinged(
    synapse_factory: SynapseFactory,
    tmp_path: Path,
) -> None:
    """A registration file given to LocalSynapse is loaded, and Synapse reaches the service on loopback."""
    as_token, hs_token = uuid.uuid4().hex, uuid.uuid4().hex
    pings: list[tuple[str | None, dict[str, object]]] = []

    async def ping(request: web.Request) -> web.Response:
        pings.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/_matrix/app/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    registration = tmp_path / "registration.yaml"
    registration.write_text(
        yaml.safe_dump(
            {
                "id": "devstack-test",
                "url": f"http://127.0.0.1:{port}",
                "as_token": as_token,
                "hs_token": hs_token,
                "sender_localpart": "_devstack_bot",
                "rate_limited": False,
                "namespaces": {"users": [{"regex": "@_devstack_.*", "exclusive": True}]},
            }
        )
    )
    hs = await synapse_factory.start(appservice_registration_files=[registration])
    try:
        headers = {"Authorization": f"Bearer {as_token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(f"{hs.base_url}/_matrix/client/v3/account/whoami") as response:
                assert response.status == 200
                assert (await response.json())["user_id"] == f"@_devstack_bot:{hs.server_name}"
            async with session.post(
                f"{hs.base_url}/_matrix/client/v1/appservice/devstack-test/ping",
                json={"transaction_id": "t1"},
            ) as response:
                assert response.status == 200, await response.text()
        assert pings == [(f"Bearer {hs_token}", {"transaction_id": "t1"})]
    finally:
        await hs.stop()
        await runner.cleanup()


async def test_restart_keeps_users_tokens_and_server_key(synapse_factory: SynapseFactory) -> None:
    hs = await synapse_factory.start()
    try:
        user_id = await hs.register_user(unique("keep"), PASSWORD)
        async with aiohttp.ClientSession() as session:
            login = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": PASSWORD,
            }
            async with session.post(f"{hs.base_url}/_matrix/client/v3/login", json=login) as response:
                token = (await response.json())["access_token"]
            async with session.get(f"{hs.base_url}/_matrix/key/v2/server") as response:
                key_before = (await response.json())["verify_keys"]
        await hs.stop()
        assert not hs.running
        await hs.stop()  # idempotent
        await hs.start()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            async with session.get(f"{hs.base_url}/_matrix/client/v3/account/whoami") as response:
                assert response.status == 200
                assert (await response.json())["user_id"] == user_id
            async with session.get(f"{hs.base_url}/_matrix/key/v2/server") as response:
                assert (await response.json())["verify_keys"] == key_before
    finally:
        await hs.stop()


async def test_failed_start_raises_with_log_tail(tmp_path: Path) -> None:
    hs = LocalSynapse(tmp_path / "broken", extra_config={"database": {"name": "nosuchdb"}})
    with pytest.raises(SynapseError, match="exited with code") as failure:
        await hs.start(timeout=60)
    assert "nosuchdb" in str(failure.value)
    assert not hs.running
