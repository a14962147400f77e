"""SecureToDeviceChannel's receive hook on real nio Olm machines (vodozemac, in-memory stores, no server),
plus its pure parts: payload parsing, sender-device matching, argument checks, request batching."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from nio import AsyncClient, AsyncClientConfig, ToDeviceEvent
from nio.crypto import OlmDevice, OutboundGroupSession
from nio.store import SqliteMemoryStore

from visio_matrix.crypto.todevice import (
    DEVICES_PER_REQUEST,
    OutgoingToDevice,
    PlainToDevice,
    SecureToDevice,
    SecureToDeviceChannel,
    ToDeviceError,
    _batches,
    find_sender_device,
    secure_message,
)

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def make_client(user_id: str, device_id: str) -> AsyncClient:
    config = AsyncClientConfig(store=SqliteMemoryStore, encryption_enabled=True)
    client = AsyncClient("http://127.0.0.1:9", user_id, device_id, config=config)
    client.restore_login(user_id, device_id, "token")
    assert client.olm is not None
    return client


def device_of(client: AsyncClient) -> OlmDevice:
    return OlmDevice(client.user_id, client.device_id, dict(client.olm.account.identity_keys))


class Pair:
    """Alice and Bob as two nio clients; Alice has an Olm session to Bob (from one of his one-time keys)."""

    def __init__(self, bob_knows_alice: bool = True) -> None:
        self.alice = make_client("@alice:example.org", "ALICEDEV")
        self.bob = make_client("@bob:example.org", "BOBDEV")
        self.bob_device = device_of(self.bob)
        self.alice.olm.device_store.add(self.bob_device)
        if bob_knows_alice:
            self.bob.olm.device_store.add(device_of(self.alice))
        account = self.bob.olm.account
        account.generate_one_time_keys(1)
        otk = next(iter(account.one_time_keys["curve25519"].values()))
        account.mark_keys_as_published()
        self.session = self.alice.olm.create_session(otk, self.bob_device.curve25519)

    def encrypted(self, event_type: str, content: dict[str, Any], sender: str | None = None) -> Any:
        """A to-device event as Bob's /sync would hand it to nio."""
        body = self.alice.olm._olm_encrypt(self.session, self.bob_device, event_type, content)
        event = {"type": "m.room.encrypted", "sender": sender or self.alice.user_id, "content": body}
        return ToDeviceEvent.parse_event(event)

    def plain(self, event_type: str, content: dict[str, Any]) -> Any:
        return ToDeviceEvent.parse_event(
            {"type": event_type, "sender": self.alice.user_id, "content": content}
        )

    async def deliver(self, *events: Any) -> None:
        """Bob's client processes a /sync response holding these to-device events (nio's own code path)."""
        await self.bob._handle_to_device(SimpleNamespace(to_device_events=list(events)))

    async def close(self) -> None:
        await self.alice.close()
        await self.bob.close()


@pytest.fixture
async def pair() -> Any:
    p = Pair()
    yield p
    await p.close()


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def test_call_events_are_captured_in_order_with_the_verified_sender_device(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob)
    channel.install()
    invite = {"call_id": "c1", "offer": {"type": "offer", "sdp": SDP}, "version": "1"}
    events = [pair.encrypted("m.call.invite", invite)]
    events += [pair.encrypted("m.call.candidates", {"call_id": "c1", "seq": i}) for i in range(5)]
    await pair.deliver(*events)
    got = drain(channel.messages)
    assert [m.type for m in got] == ["m.call.invite"] + ["m.call.candidates"] * 5
    assert got[0].content == invite
    assert [m.content["seq"] for m in got[1:]] == list(range(5))
    first = got[0]
    assert first.sender == "@alice:example.org"
    assert first.sender_key == pair.alice.olm.account.identity_keys["curve25519"]
    assert first.sender_ed25519 == pair.alice.olm.account.identity_keys["ed25519"]
    assert first.claimed_device == "ALICEDEV"  # nio puts sender_device in the Olm payload
    assert first.sender_device == "ALICEDEV" and first.verified
    assert drain(channel.plain_messages) == []


async def test_unknown_sender_device_is_unverified() -> None:
    p = Pair(bob_knows_alice=False)
    try:
        channel = SecureToDeviceChannel(p.bob)
        channel.install()
        await p.deliver(p.encrypted("m.call.hangup", {"call_id": "c1"}))
        (msg,) = drain(channel.messages)
        assert msg.type == "m.call.hangup" and msg.sender_device is None and not msg.verified
    finally:
        await p.close()


async def test_spoofed_envelope_sender_is_dropped_by_nio_before_the_hook(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob)
    channel.install()
    await pair.deliver(pair.encrypted("m.call.invite", {"call_id": "c1"}, sender="@mallory:example.org"))
    assert drain(channel.messages) == []


async def test_nio_keeps_handling_room_keys_and_dummies(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob)
    channel.install()
    group = OutboundGroupSession()
    room_key = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "room_id": "!room:example.org",
        "session_id": group.id,
        "session_key": group.session_key,
    }
    await pair.deliver(pair.encrypted("m.room_key", room_key), pair.encrypted("m.dummy", {}))
    assert drain(channel.messages) == []
    sender_key = pair.alice.olm.account.identity_keys["curve25519"]
    assert pair.bob.olm.inbound_group_store.get("!room:example.org", sender_key, group.id) is not None


async def test_type_filter_leaves_other_types_to_nio(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob, types={"m.call.invite"})
    channel.install()
    await pair.deliver(
        pair.encrypted("m.call.answer", {"call_id": "c1"}),
        pair.encrypted("m.call.invite", {"call_id": "c2"}),
        pair.plain("m.call.answer", {"call_id": "c3"}),
    )
    assert [m.content["call_id"] for m in drain(channel.messages)] == ["c2"]
    assert drain(channel.plain_messages) == []


def test_nio_types_cannot_be_captured() -> None:
    with pytest.raises(ValueError, match=r"m\.room_key"):
        SecureToDeviceChannel(make_client("@c:example.org", "C"), types={"m.call.invite", "m.room_key"})


async def test_unencrypted_events_go_to_the_plain_queue_only(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob)
    channel.install()
    await pair.deliver(pair.plain("m.call.invite", {"call_id": "c1", "offer": {"sdp": SDP}}))
    assert drain(channel.messages) == []
    assert drain(channel.plain_messages) == [
        PlainToDevice("m.call.invite", {"call_id": "c1", "offer": {"sdp": SDP}}, "@alice:example.org")
    ]


async def test_install_is_idempotent(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob)
    channel.install()
    channel.install()
    await pair.deliver(
        pair.encrypted("m.call.invite", {"call_id": "c1"}), pair.plain("m.call.reject", {"x": 1})
    )
    assert len(drain(channel.messages)) == 1
    assert len(drain(channel.plain_messages)) == 1


def test_install_needs_an_olm_machine() -> None:
    client = AsyncClient("http://127.0.0.1:9", "@c:example.org")
    with pytest.raises(ToDeviceError, match="no Olm machine"):
        SecureToDeviceChannel(client).install()


async def test_full_queue_drops_the_oldest_and_counts(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob, queue_size=2)
    channel.install()
    await pair.deliver(*[pair.encrypted("m.call.candidates", {"seq": i}) for i in range(5)])
    assert [m.content["seq"] for m in drain(channel.messages)] == [3, 4]
    assert channel.dropped == 3


async def test_handlers_get_messages_in_order_instead_of_the_queue(pair: Pair) -> None:
    channel = SecureToDeviceChannel(pair.bob)
    channel.install()
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(msg: SecureToDevice) -> None:
        if msg.content["seq"] == 1:
            raise RuntimeError("a failing handler does not stop delivery")
        await asyncio.sleep(0)
        seen.append(msg.content["seq"])
        if len(seen) == 4:
            done.set()

    channel.add_handler(handler)
    try:
        await pair.deliver(*[pair.encrypted("m.call.candidates", {"seq": i}) for i in range(5)])
        await asyncio.wait_for(done.wait(), 5)
        assert seen == [0, 2, 3, 4]
        assert channel.messages.empty()
    finally:
        await channel.close()


async def test_unreachable_homeserver_gives_a_to_device_error() -> None:
    # Port 9 (discard) is closed on loopback: the key query fails at once, as ToDeviceError.
    config = AsyncClientConfig(store=SqliteMemoryStore, encryption_enabled=True, max_timeouts=0)
    client = AsyncClient("http://127.0.0.1:9", "@c:example.org", "CDEV", config=config)
    client.restore_login("@c:example.org", "CDEV", "token")
    try:
        with pytest.raises(ToDeviceError, match="keys/query failed"):
            await asyncio.wait_for(
                SecureToDeviceChannel(client).send("@d:x", "DDEV", "m.call.invite", {}), 30
            )
    finally:
        await client.close()


# ---- pure parts -----------------------------------------------------------------------------------

DEV = SimpleNamespace(device_id="D1", curve25519="curve1", ed25519="ed1")
OTHER = SimpleNamespace(device_id="D2", curve25519="curve2", ed25519="ed2")


@pytest.mark.parametrize(
    ("sender_key", "ed25519", "claimed", "expected"),
    [
        ("curve1", "ed1", None, "D1"),
        ("curve1", "ed1", "D1", "D1"),
        ("curve2", "ed2", None, "D2"),
        ("curve1", "ed1", "D2", None),  # the payload names another device
        ("curve1", "ed2", None, None),  # keys of two different devices
        ("curve9", "ed1", None, None),
        ("curve1", "", None, None),
        ("", "ed1", None, None),
    ],
)
def test_find_sender_device(sender_key: str, ed25519: str, claimed: str | None, expected: str | None) -> None:
    assert find_sender_device([DEV, OTHER], sender_key, ed25519, claimed) == expected


def test_secure_message_from_payload() -> None:
    payload = {
        "type": "m.call.answer",
        "content": {"a": 1},
        "keys": {"ed25519": "ed1"},
        "sender_device": "D1",
    }
    msg = secure_message("@a:x", "curve1", payload, [DEV])
    assert msg == SecureToDevice("m.call.answer", {"a": 1}, "@a:x", "curve1", "D1", "ed1", "D1")
    assert secure_message("@a:x", "curve1", {**payload, "keys": {}}, [DEV]).sender_device is None


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"type": 3, "content": {}}, "type is not a string"),
        ({"type": "", "content": {}}, "type is not a string"),
        ({"type": "m.call.invite", "content": [1]}, "content is not an object"),
        ({"type": "m.call.invite"}, "content is not an object"),
    ],
)
def test_secure_message_rejects_bad_payloads(payload: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        secure_message("@a:x", "curve1", payload, [DEV])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("alice", "D", "m.call.invite", {}), "user_id must be a Matrix user ID"),
        (("@alice:x", "", "m.call.invite", {}), "device_id must name one device"),
        (("@alice:x", "*", "m.call.invite", {}), "device_id must name one device"),
        (("@alice:x", "D", "", {}), "event type must be a non-empty string"),
        (("@alice:x", "D", "m.call.invite", "sdp"), "content must be a JSON object"),
        (("@alice:x", "D", "m.call.invite", {"x": object()}), "not JSON-serializable"),
    ],
)
def test_outgoing_arguments_are_checked(args: tuple[Any, ...], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        OutgoingToDevice(*args)


def test_batches_hold_each_device_once_and_keep_order() -> None:
    def m(device: str, n: int) -> OutgoingToDevice:
        return OutgoingToDevice("@u:x", device, "t", {"n": n})

    msgs = [m("A", 0), m("B", 1), m("A", 2), m("C", 3), m("A", 4)]
    assert [[x.content["n"] for x in b] for b in _batches(msgs)] == [[0, 1], [2, 3], [4]]
    many = [m(f"D{i}", i) for i in range(DEVICES_PER_REQUEST + 1)]
    assert [len(b) for b in _batches(many)] == [DEVICES_PER_REQUEST, 1]
    assert list(_batches([])) == []
