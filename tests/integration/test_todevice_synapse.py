"""Olm-encrypted to-device messages of any type through a real Synapse: users' nio clients and the
bot's appservice device, sender verification, order, refusals, and what the homeserver stores."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_asyncio
from nio import AsyncClient
from synapse_fixtures import SynapseFactory

from visio_matrix.appservice.homeserver import HomeserverClient
from visio_matrix.config import load_config
from visio_matrix.crypto.bot_device import AppserviceAsyncClient, BotDevice
from visio_matrix.crypto.todevice import (
    OutgoingToDevice,
    PlainToDevice,
    SecureToDevice,
    SecureToDeviceChannel,
    ToDeviceError,
)
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port
from visio_matrix.devstack.user import MatrixUser
from visio_matrix.metrics import Metrics
from visio_matrix.storage import open_store, sqlite_url

pytestmark = pytest.mark.synapse

PASSWORD = "correct horse battery staple"
# Every secret put inside an encrypted message in this module; none may ever reach the homeserver.
SECRETS: list[str] = []


def secret_sdp() -> tuple[str, str]:
    """An SDP-looking offer with a unique marker in it."""
    marker = f"secret-{uuid.uuid4().hex}"
    SECRETS.append(marker)
    sdp = (
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
        f"a=ice-ufrag:{marker}\r\na=fingerprint:sha-256 AB:CD\r\n"
    )
    return sdp, marker


@dataclass
class Peer:
    user: MatrixUser
    channel: SecureToDeviceChannel

    @property
    def user_id(self) -> str:
        return self.user.user_id

    @property
    def device_id(self) -> str:
        return self.user.device_id

    @property
    def curve25519(self) -> str:
        return str(self.user.client.olm.account.identity_keys["curve25519"])

    async def next(self, timeout: float = 20) -> SecureToDevice:
        return await asyncio.wait_for(self.channel.messages.get(), timeout)

    async def next_plain(self, timeout: float = 20) -> PlainToDevice:
        return await asyncio.wait_for(self.channel.plain_messages.get(), timeout)


async def login(hs: LocalSynapse, prefix: str, store: Path, localpart: str | None = None) -> Peer:
    localpart = localpart or f"{prefix}{uuid.uuid4().hex[:6]}"
    user_id = await hs.register_user(localpart, PASSWORD)
    user = await MatrixUser.login(
        hs.base_url, user_id, PASSWORD, store / f"{localpart}-{uuid.uuid4().hex[:4]}"
    )
    channel = SecureToDeviceChannel(user.client)
    channel.install()
    return Peer(user, channel)


@pytest_asyncio.fixture
async def pair(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    alice = await login(synapse, "alice", tmp_path)
    bob = await login(synapse, "bob", tmp_path)
    try:
        yield alice, bob
    finally:
        await alice.user.close()
        await bob.user.close()


async def test_invite_and_answer_between_two_users(pair: tuple[Peer, Peer]) -> None:
    alice, bob = pair
    sdp, _ = secret_sdp()
    invite = {
        "call_id": "c1",
        "party_id": "p1",
        "version": "1",
        "lifetime": 60000,
        "offer": {"type": "offer", "sdp": sdp},
    }
    await alice.channel.send(bob.user_id, bob.device_id, "m.call.invite", invite)

    got = await bob.next()
    assert (got.type, got.content, got.sender) == ("m.call.invite", invite, alice.user_id)
    assert got.sender_key == alice.curve25519
    # Bob shares no room with Alice, so nio never fetched her device keys: not verified yet...
    assert got.sender_device is None and not got.verified
    # ...until a key query finds her device with both keys of the Olm payload.
    got = await bob.channel.refresh_sender(got)
    assert got.sender_device == alice.device_id and got.verified

    answer_sdp, _ = secret_sdp()
    answer = {
        "call_id": "c1",
        "party_id": "p2",
        "version": "1",
        "answer": {"type": "answer", "sdp": answer_sdp},
    }
    await bob.channel.send(alice.user_id, alice.device_id, "m.call.answer", answer)
    reply = await alice.next()
    assert (reply.type, reply.content, reply.sender) == ("m.call.answer", answer, bob.user_id)
    # Alice fetched Bob's keys to encrypt to him: his device is verified at once.
    assert reply.sender_device == bob.device_id and reply.sender_key == bob.curve25519


async def test_quick_messages_keep_their_order(pair: tuple[Peer, Peer]) -> None:
    alice, bob = pair
    for i in range(5):
        await alice.channel.send(bob.user_id, bob.device_id, "m.call.candidates", {"call_id": "c", "seq": i})
    # Concurrent sends too: they reach the homeserver in call order.
    await asyncio.gather(
        *(
            alice.channel.send(bob.user_id, bob.device_id, "m.call.candidates", {"call_id": "c", "seq": i})
            for i in range(5, 10)
        )
    )
    got = [await bob.next() for _ in range(10)]
    assert [m.content["seq"] for m in got] == list(range(10))
    assert all(m.type == "m.call.candidates" and m.sender == alice.user_id for m in got)


async def test_send_many_reaches_several_devices_in_one_go(
    pair: tuple[Peer, Peer], synapse: LocalSynapse, tmp_path: Path
) -> None:
    alice, bob = pair
    bob2 = await login(synapse, "bob", tmp_path / "second", localpart=bob.user_id[1:].split(":")[0])
    try:
        failures = await alice.channel.send_many(
            [
                OutgoingToDevice(bob.user_id, bob.device_id, "io.element.call.encryption_keys", {"k": 1}),
                OutgoingToDevice(bob.user_id, bob2.device_id, "io.element.call.encryption_keys", {"k": 2}),
                OutgoingToDevice(bob.user_id, "NOSUCHDEVICE", "io.element.call.encryption_keys", {"k": 3}),
                OutgoingToDevice(bob.user_id, bob.device_id, "io.element.call.encryption_keys", {"k": 4}),
            ]
        )
        assert failures == {(bob.user_id, "NOSUCHDEVICE"): "unknown device (no published keys)"}
        assert [(await bob.next()).content["k"] for _ in range(2)] == [1, 4]
        assert (await bob2.next()).content == {"k": 2}
    finally:
        await bob2.user.close()


async def test_unreachable_devices_raise_clear_errors(pair: tuple[Peer, Peer], synapse: LocalSynapse) -> None:
    alice, bob = pair
    with pytest.raises(ToDeviceError, match=r"NOSUCHDEVICE: unknown device"):
        await alice.channel.send(bob.user_id, "NOSUCHDEVICE", "m.call.invite", {"call_id": "c"})
    nobody = synapse.user_id(f"nobody{uuid.uuid4().hex[:6]}")
    with pytest.raises(ToDeviceError, match="unknown device"):
        await alice.channel.send(nobody, "DEV", "m.call.invite", {"call_id": "c"})
    with pytest.raises(ValueError, match="content must be a JSON object"):
        await alice.channel.send(bob.user_id, bob.device_id, "m.call.invite", "sdp")  # type: ignore[arg-type]
    # Nothing of that reached Bob; a good message still does.
    await alice.channel.send(bob.user_id, bob.device_id, "m.call.hangup", {"call_id": "c"})
    assert (await bob.next()).type == "m.call.hangup"
    assert bob.channel.messages.empty()


async def test_unencrypted_call_event_goes_to_the_plain_queue_only(pair: tuple[Peer, Peer]) -> None:
    alice, bob = pair
    await alice.channel.send_plain(
        bob.user_id, bob.device_id, "m.call.invite", {"call_id": "plain", "offer": {"sdp": "x"}}
    )
    await alice.channel.send(bob.user_id, bob.device_id, "m.call.hangup", {"call_id": "after"})
    plain = await bob.next_plain()
    assert plain == PlainToDevice("m.call.invite", {"call_id": "plain", "offer": {"sdp": "x"}}, alice.user_id)
    # The encrypted message sent after the plain one is the first in `messages`: the plain one never was.
    first = await bob.next()
    assert (first.type, first.content) == ("m.call.hangup", {"call_id": "after"})
    assert bob.channel.plain_messages.empty()


async def test_megolm_room_keys_still_work_and_room_members_are_verified_at_once(
    pair: tuple[Peer, Peer],
) -> None:
    alice, bob = pair
    room_id = await alice.user.create_room("call room", invite=[bob.user_id], encrypted=True)
    await bob.user.join(room_id)
    await alice.user.wait_for_membership(room_id, bob.user_id, "join")
    await alice.user.send_text(room_id, "hello over megolm")
    seen = await bob.user.wait_for_message(room_id, lambda m: m.body == "hello over megolm")
    assert seen.encrypted and seen.decrypted
    assert bob.channel.messages.empty()  # the m.room_key went to nio, not to the channel

    # Sharing an encrypted room, Bob's client tracks Alice's devices: her messages verify without a refresh.
    await bob.user.wait_for_device(alice.user_id, alice.device_id)
    await alice.channel.send(bob.user_id, bob.device_id, "m.call.invite", {"call_id": "in-room"})
    got = await bob.next()
    assert got.content == {"call_id": "in-room"} and got.sender_device == alice.device_id


async def test_homeserver_stores_only_ciphertext(
    pair: tuple[Peer, Peer], synapse: LocalSynapse, tmp_path: Path
) -> None:
    """A device that does not sync keeps its to-device messages in Synapse's device_inbox: read them there."""
    alice, bob = pair
    offline = await login(synapse, "bob", tmp_path / "offline", localpart=bob.user_id[1:].split(":")[0])
    await offline.user.close()  # logged in with keys uploaded, then never syncs again
    sdp, marker = secret_sdp()
    await alice.channel.send(
        bob.user_id, offline.device_id, "m.call.invite", {"call_id": "db", "offer": {"sdp": sdp}}
    )
    control = f"plain-{uuid.uuid4().hex}"
    await alice.channel.send_plain(bob.user_id, offline.device_id, "m.call.reject", {"call_id": control})

    db = sqlite3.connect(f"file:{synapse.database_path}?mode=ro", uri=True)
    try:
        rows = [
            json.loads(r[0])
            for r in db.execute(
                "SELECT message_json FROM device_inbox WHERE user_id = ? AND device_id = ?",
                (bob.user_id, offline.device_id),
            )
        ]
    finally:
        db.close()
    by_type = {r["type"]: r for r in rows}
    assert set(by_type) == {"m.room.encrypted", "m.call.reject"}
    assert control in json.dumps(by_type["m.call.reject"])  # the check can see plaintext when there is some
    encrypted = by_type["m.room.encrypted"]["content"]
    assert encrypted["algorithm"] == "m.olm.v1.curve25519-aes-sha2"
    assert set(encrypted["ciphertext"]) == {offline.curve25519}
    assert marker not in json.dumps(rows) and "m.call.invite" not in json.dumps(rows)

    # And no secret sent so far in this module is anywhere in the homeserver's files (database, WAL, logs).
    assert_no_secrets(synapse, SECRETS, control)


def assert_no_secrets(hs: LocalSynapse, secrets: list[str], visible: str) -> None:
    """None of `secrets` is in the homeserver's database, WAL or log files, where `visible` is."""
    files = [p for p in hs.workdir.iterdir() if p.name.startswith("homeserver.") and p.is_file()]
    assert any(p.name == "homeserver.db" for p in files)
    blobs = b"".join(p.read_bytes() for p in files)
    assert visible.encode() in blobs
    assert secrets and not [s for s in secrets if s.encode() in blobs]


# ---- the bot's appservice device ------------------------------------------------------------------


@pytest_asyncio.fixture
async def bot_hs(synapse_factory: SynapseFactory, tmp_path: Path) -> tuple[LocalSynapse, Path]:
    client_port = free_port()
    config_path, registration = write_service_files(
        tmp_path / "service",
        homeserver_url=f"http://127.0.0.1:{client_port}",
        server_name=f"localhost:{client_port}",
        port=free_port(),
    )
    hs = await synapse_factory.start(client_port=client_port, appservice_registration_files=[registration])
    return hs, config_path


async def test_bot_device_exchanges_encrypted_call_events(
    bot_hs: tuple[LocalSynapse, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hs, config_path = bot_hs
    config = load_config(config_path)[0]
    store = await open_store(sqlite_url(tmp_path / "service.db"))
    homeserver = HomeserverClient(config.homeserver.url, config.appservice.as_token, config.appservice.id)
    bot = BotDevice(
        homeserver=homeserver,
        as_token=config.appservice.as_token,
        user_id=config.appservice.bot_user_id(config.homeserver.server_name),
        store_dir=tmp_path / "bot-crypto",
        pickle_key=config.crypto.pickle_key,
        state=store,
        metrics=Metrics(),
    )
    # Every request the bot's nio client makes, with the query string its appservice client adds.
    bot_requests: list[str] = []
    nio_send = AsyncClient.send

    async def recording_send(self: AsyncClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, AppserviceAsyncClient):
            bot_requests.append(path)
        return await nio_send(self, method, path, *args, **kwargs)

    monkeypatch.setattr(AsyncClient, "send", recording_send)
    await bot.start()
    bot_user, bot_device = bot.user_id, bot.device_id
    alice = await login(hs, "alice", tmp_path)
    alice_phone = await login(hs, "alice", tmp_path / "phone", localpart=alice.user_id[1:].split(":")[0])
    try:
        sdp, marker = secret_sdp()
        await alice.channel.send(
            bot.user_id, bot.device_id, "m.call.invite", {"call_id": "b1", "offer": {"sdp": sdp}}
        )
        got = await asyncio.wait_for(bot.to_device.messages.get(), 30)
        assert (got.type, got.sender, got.content["offer"]["sdp"]) == ("m.call.invite", alice.user_id, sdp)
        got = got if got.verified else await bot.to_device.refresh_sender(got)
        assert got.sender_device == alice.device_id

        answer_sdp, answer_marker = secret_sdp()
        await bot.send_to_device(
            alice.user_id, alice.device_id, "m.call.answer", {"call_id": "b1", "answer": {"sdp": answer_sdp}}
        )
        reply = await alice.next(30)
        assert (reply.type, reply.content["answer"]["sdp"]) == ("m.call.answer", answer_sdp)
        assert reply.sender == bot.user_id and reply.sender_device == bot.device_id
        # A device the bot has no Olm session with yet: the bot claims a one-time key first.
        await bot.send_to_device(alice.user_id, alice_phone.device_id, "m.call.hangup", {"call_id": "b1"})
        hangup = await alice_phone.next(30)
        assert (hangup.type, hangup.content, hangup.sender) == (
            "m.call.hangup",
            {"call_id": "b1"},
            bot.user_id,
        )
        # Alice's phone never fetched the bot's keys: verified after a key query.
        assert (await alice_phone.channel.refresh_sender(hangup)).sender_device == bot.device_id
    finally:
        await alice.user.close()
        await alice_phone.user.close()
        await bot.stop()
        await homeserver.close()
        await store.close()

    # nio's keys/claim, keys/query and sendToDevice went out as the bot's device (appservice masquerading).
    for fragment in ("/keys/claim", "/keys/query", "/sendToDevice/m.room.encrypted/"):
        hits = [urlparse(p) for p in bot_requests if fragment in p]
        assert hits, fragment
        for url in hits:
            assert parse_qs(url.query) == {"user_id": [bot_user], "device_id": [bot_device]}, url
    assert_no_secrets(hs, [marker, answer_marker], alice.user_id)
