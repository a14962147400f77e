"""The service against a real Synapse: spec error codes, transactions once, E2EE commands, restart."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from synapse_fixtures import ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.crypto.cross_signing import verify_json
from visio_matrix.devstack.user import MatrixUser, MessageView

pytestmark = pytest.mark.synapse


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    """One Synapse with our registration for the whole session (the service runs per test)."""
    return await service_stack(synapse_factory, tmp_path_factory, "visio", stop_power_level=50)


def bot_reply(start: str) -> Any:
    def predicate(m: MessageView) -> bool:
        return m.sender.startswith("@visio:") and (m.body or "").startswith(start)

    return predicate


async def room_with_bot(user: MatrixUser, service: Service, encrypted: bool = True) -> str:
    room_id = await user.create_room("call room", invite=[service.bot_user_id], encrypted=encrypted)
    await user.wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)
    await user.wait_for_message(room_id, bot_reply("Hello!"), timeout=30)
    return room_id


async def test_startup_ping_and_health(service: Service) -> None:
    assert service.ping_result is not None and service.ping_result.ok, service.ping_result
    base = service.config.appservice.public_url
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/health/live") as resp:
            assert resp.status == 200
        async with http.get(base + "/health/ready") as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["checks"] == {"database": "ok", "homeserver": "ok"}
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
            assert resp.status == 200
            assert "visio_appservice_transactions_total" in text


async def test_spec_error_codes_over_real_http(service: Service) -> None:
    base = service.config.appservice.public_url + "/_matrix/app/v1"
    good = {"Authorization": f"Bearer {service.config.appservice.hs_token}"}
    cases = [
        ("PUT", "/transactions/x1", {}, b'{"events": []}', 401, "M_UNAUTHORIZED"),
        ("PUT", "/transactions/x1", {"Authorization": "Bearer nope"}, b'{"events": []}', 403, "M_FORBIDDEN"),
        ("PUT", "/transactions/x2", good, b"{oops", 400, "M_NOT_JSON"),
        ("PUT", "/transactions/x3", good, b'{"events": {}}', 400, "M_BAD_JSON"),
        ("GET", "/no/such/route", good, b"", 404, "M_UNRECOGNIZED"),
        ("GET", "/users/@someone:elsewhere", good, b"", 404, "M_NOT_FOUND"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, headers, data, status, errcode in cases:
            async with http.request(method, base + path, headers=headers, data=data) as resp:
                body = await resp.json()
                assert (resp.status, body.get("errcode")) == (status, errcode), (method, path, body)
        async with http.get(base + f"/users/{service.bot_user_id}", headers=good) as resp:
            assert resp.status == 200


async def test_encrypted_command_gets_encrypted_reply(stack: ServiceStack, service: Service) -> None:
    alice = await stack.new_user("alice")
    try:
        room_id = await room_with_bot(alice, service)
        await alice.send_text(room_id, "!visio start")
        reply = await alice.wait_for_message(room_id, bot_reply("📞 Call started"), timeout=30)
        assert reply.encrypted and reply.decrypted
        assert alice.user_id in reply.body
        record = await service.store.get_active_conference(room_id)
        assert record is not None and record.started_by == alice.user_id

        await alice.send_text(room_id, "!visio status")
        status = await alice.wait_for_message(room_id, bot_reply("Call running for"), timeout=30)
        assert status.encrypted and status.decrypted

        # The room creator (room v12: privileged) may stop it.
        await alice.send_text(room_id, "!visio stop")
        stopped = await alice.wait_for_message(room_id, bot_reply("📴 Call ended"), timeout=30)
        assert stopped.decrypted
        assert await service.store.get_active_conference(room_id) is None
    finally:
        await alice.close()


async def test_member_without_power_gets_clear_refusal(stack: ServiceStack, service: Service) -> None:
    alice, bob = await stack.new_user("alice"), await stack.new_user("bob")
    try:
        room_id = await room_with_bot(alice, service)
        await alice.invite(room_id, bob.user_id)
        await bob.join(room_id)
        await alice.send_text(room_id, "!visio start")
        await alice.wait_for_message(room_id, bot_reply("📞 Call started"), timeout=30)
        await bob.send_text(room_id, "!visio stop")
        refusal = await bob.wait_for_message(
            room_id, bot_reply("Sorry: Ending a call needs power level 50"), 30
        )
        assert refusal.decrypted
        assert await service.store.get_active_conference(room_id) is not None
    finally:
        await alice.close()
        await bob.close()


def fake_event(room_id: str, sender: str, body: str) -> dict[str, Any]:
    return {
        "event_id": f"$fake{uuid.uuid4().hex}",
        "room_id": room_id,
        "sender": sender,
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": body},
        "origin_server_ts": 1,
    }


async def put_transaction(service: Service, txn_id: str, events: list[Any]) -> int:
    url = f"{service.config.appservice.public_url}/_matrix/app/v1/transactions/{txn_id}"
    headers = {"Authorization": f"Bearer {service.config.appservice.hs_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(url, json={"events": events}, headers=headers) as resp,
    ):
        return resp.status


async def test_duplicate_transaction_once_also_after_restart(stack: ServiceStack) -> None:
    """A replayed transaction (same txnId) has no second effect, even after the service restarted."""
    svc = stack.service()
    await svc.start()
    alice = await stack.new_user("alice")
    try:
        room_id = await room_with_bot(alice, svc, encrypted=False)
        txn_id = f"dup-{uuid.uuid4().hex}"
        events = [fake_event(room_id, alice.user_id, "!visio start")]
        assert await put_transaction(svc, txn_id, events) == 200
        await alice.wait_for_message(room_id, bot_reply("📞 Call started"), timeout=30)
        assert await put_transaction(svc, txn_id, events) == 200
        await svc.stop()
        svc = stack.service()
        await svc.start()
        assert await put_transaction(svc, txn_id, events) == 200
        # A marker command after the replays: once its answer is there, any reply to a replay would be too.
        await alice.send_text(room_id, "!visio status")
        await alice.wait_for_message(room_id, bot_reply("Call running for"), timeout=30)
        bot_msgs = [m.body or "" for m in alice.messages(room_id) if m.sender == svc.bot_user_id]
        assert sum(b.startswith("📞 Call started") for b in bot_msgs) == 1
        assert not any("already running" in b for b in bot_msgs)
    finally:
        await alice.close()
        await svc.stop()


async def test_bad_event_among_good_ones(stack: ServiceStack, service: Service) -> None:
    alice = await stack.new_user("alice")
    try:
        room_id = await room_with_bot(alice, service, encrypted=False)
        events: list[Any] = [
            "not an event",
            {"type": "m.room.message", "content": {"body": "!visio start"}},  # no ids
            fake_event(room_id, alice.user_id, "!visio start"),
            {**fake_event(room_id, alice.user_id, "!visio help"), "content": "not an object"},
        ]
        assert await put_transaction(service, f"bad-{uuid.uuid4().hex}", events) == 200
        reply = await alice.wait_for_message(room_id, bot_reply("📞 Call started"), timeout=30)
        assert not reply.encrypted  # plain room, plain reply
        assert await service.store.get_active_conference(room_id) is not None
    finally:
        await alice.close()


async def assert_cross_signed(user: MatrixUser, bot: str, device_id: str, master: str) -> None:
    """What any client sees: master key -> self-signing key -> the bot's device, all signed."""
    url = f"{user.client.homeserver}/_matrix/client/v3/keys/query"
    headers = {"Authorization": f"Bearer {user.access_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"device_keys": {bot: []}}, headers=headers) as r,
    ):
        keys = await r.json()
    assert list(keys["master_keys"][bot]["keys"].values()) == [master]
    ssk_obj = keys["self_signing_keys"][bot]
    assert verify_json(ssk_obj, bot, master)
    (ssk,) = ssk_obj["keys"].values()
    assert verify_json(keys["device_keys"][bot][device_id], bot, ssk)


async def test_restarted_bot_keeps_its_device_and_still_decrypts(stack: ServiceStack) -> None:
    svc = stack.service()
    await svc.start()
    alice = await stack.new_user("alice")
    try:
        room_id = await room_with_bot(alice, svc)
        device_before, keys_before = svc.device.device_id, svc.device.identity_keys()
        master_before = svc.device.master_key
        await alice.send_text(room_id, "!visio status")
        await alice.wait_for_message(room_id, bot_reply("No call in this room"), timeout=30)
        await svc.stop()

        svc = stack.service()
        await svc.start()
        assert svc.device.device_id == device_before
        assert svc.device.master_key == master_before
        assert svc.device.identity_keys() == keys_before
        assert svc.device.master_key is not None
        await assert_cross_signed(alice, svc.bot_user_id, device_before, svc.device.master_key)
        # Alice's client still knows exactly one device of the bot: the same one.
        devices = alice.client.device_store.active_user_devices(svc.bot_user_id)
        assert [d.id for d in devices] == [device_before]
        await alice.send_text(room_id, "!visio start")
        reply = await alice.wait_for_message(room_id, bot_reply("📞 Call started"), timeout=30)
        assert reply.decrypted
    finally:
        await alice.close()
        await svc.stop()


async def test_invite_refused_when_policy_does_not_allow_the_inviters_server(stack: ServiceStack) -> None:
    """Same homeserver, but a policy that only admits another ministry: the bot declines the invite."""
    config = stack.config()
    strict = replace(config, policy=replace(config.policy, allowed_servers=("ministry-b.example",)))
    svc = Service(strict)
    await svc.start()
    alice = await stack.new_user("alice")
    try:
        room_id = await alice.create_room("not for the bot", invite=[svc.bot_user_id], encrypted=True)
        await alice.wait_for_membership(room_id, svc.bot_user_id, "leave", timeout=30)
        assert alice.membership(room_id, svc.bot_user_id) == "leave"
    finally:
        await alice.close()
        await svc.stop()
