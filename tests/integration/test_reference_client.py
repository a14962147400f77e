"""The reference client library against the real service: real Synapse, real bot device, real relay.

Three people in an encrypted room start a call with ``!visio start``; each joins with a
``ConferenceClient`` (Olm-encrypted to-device signaling to the bot's device) publishing a colour and a
tone, and must receive the other two's audio and video, content-checked, named with the right Matrix
user and device. A service restart brings them back by the bot's re-invite.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from synapse_fixtures import PASSWORD, ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.client import ConferenceClient, RemoteTrack, login_client
from visio_matrix.client.media import ColorVideoTrack, Received, ToneAudioTrack
from visio_matrix.devstack.call_check import loopback_pc
from visio_matrix.devstack.user import MatrixUser, MessageView

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the relay suite's frame recorder
from relay.peers import record_frame

pytestmark = [pytest.mark.synapse, pytest.mark.media]

COLORS = {"alice": (230, 20, 20), "bob": (20, 230, 20), "carol": (20, 20, 230)}
TONES = {"alice": 440.0, "bob": 1000.0, "carol": 2500.0}


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    return await service_stack(synapse_factory, tmp_path_factory, "visio-client")


def bot_says(start: str) -> object:
    def predicate(m: MessageView) -> bool:
        return m.sender.startswith("@visio:") and (m.body or "").startswith(start)

    return predicate


async def call_room(
    stack: ServiceStack, service: Service, names: list[str]
) -> tuple[str, dict[str, MatrixUser]]:
    """An encrypted room with the bot and these people, and a call started in it."""
    users = {name: await stack.new_user(name) for name in names}
    owner = users[names[0]]
    room_id = await owner.create_room("call room", invite=[service.bot_user_id])
    await owner.wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)
    for name in names[1:]:
        await owner.invite(room_id, users[name].user_id)
        await users[name].join(room_id)
    for user in users.values():
        await user.wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)
    await owner.send_text(room_id, "!visio start")
    await owner.wait_for_message(room_id, bot_says("📞 Call started"), timeout=30)  # type: ignore[arg-type]
    return room_id, users


class Reader:
    """Decodes one remote track in the background, keeping what ``Received`` measures."""

    def __init__(self, remote: RemoteTrack) -> None:
        self.remote = remote
        self.record = Received(remote.kind)
        self._task = asyncio.get_running_loop().create_task(self._read(remote.track))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                record_frame(self.record, await track.recv(), colour_every=1)
        except MediaStreamError:
            return

    def ready(self) -> bool:
        if self.record.frames < 20:
            return False
        return (
            self.record.last_rgb is not None if self.record.kind == "video" else len(self.record.audio) >= 50
        )

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, details: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} {details()}")
        await asyncio.sleep(0.1)


async def check_media(
    clients: dict[str, ConferenceClient], users: dict[str, MatrixUser], devices: dict[str, str]
) -> list[RemoteTrack]:
    """Every client decodes the others' colour and tone, on tracks named with their user and device."""
    readers: list[tuple[str, str, Reader]] = []
    try:
        for name, client in clients.items():
            for other in clients:
                if other == name:
                    continue
                for kind in ("audio", "video"):
                    remote = await client.wait_for_track(users[other].user_id, kind, timeout=30)
                    assert remote.device_id == devices[other], (name, other, kind, remote)
                    assert remote.purpose == "m.usermedia"
                    readers.append((name, other, Reader(remote)))
        await wait_until(
            lambda: all(r.ready() for _, _, r in readers),
            40,
            "every client decoding the others",
            lambda: [(n, o, r.record.kind, r.record.frames) for n, o, r in readers if not r.ready()],
        )
        for name, other, reader in readers:
            record = reader.record
            if record.kind == "video":
                assert record.last_rgb is not None
                assert all(abs(a - b) < 40 for a, b in zip(record.last_rgb, COLORS[other], strict=True)), (
                    f"{name} sees {record.last_rgb} on {other}'s video, expected {COLORS[other]}"
                )
            else:
                freq = record.dominant_frequency()
                assert abs(freq - TONES[other]) < 30, f"{name} hears {freq} Hz from {other}"
        return [r.remote for _, _, r in readers]
    finally:
        for _, _, reader in readers:
            await reader.close()


async def test_three_clients_receive_each_others_media_with_identities(
    stack: ServiceStack, service: Service
) -> None:
    room_id, users = await call_room(stack, service, ["alice", "bob", "carol"])
    # Carol joins from a second device of hers: a client made by the library's own login helper.
    carol_device = await login_client(
        stack.hs.base_url,
        users["carol"].user_id,
        PASSWORD,
        stack.workdir / "visio-clients" / uuid.uuid4().hex,
    )
    clients: dict[str, ConferenceClient] = {}
    try:
        devices = {
            "alice": users["alice"].device_id,
            "bob": users["bob"].device_id,
            "carol": carol_device.device_id,
        }
        for name in ("alice", "bob"):
            clients[name] = ConferenceClient(
                users[name].client,
                room_id,
                service.bot_user_id,
                peer_connection_factory=loopback_pc,
                join_timeout=30,
            )
        clients["carol"] = ConferenceClient(
            carol_device.client,
            room_id,
            service.bot_user_id,
            channel=carol_device.to_device,
            peer_connection_factory=loopback_pc,
            join_timeout=30,
        )
        for name, client in clients.items():
            await client.join([ToneAudioTrack(TONES[name]), ColorVideoTrack(COLORS[name])])
            assert client.state == "joined"
            assert client.focus is not None and client.focus.device_id == service.device.device_id
        await check_media(clients, users, devices)
        assert {p.identity.device_id for p in service.hub.participants(room_id)} == set(devices.values())
        # Leaving: the others stop receiving the leaver's tracks.
        await clients["carol"].leave()
        await wait_until(
            lambda: clients["alice"].remote.find(users["carol"].user_id, "video") is None,
            20,
            "carol's video gone from alice's tracks",
        )
        assert clients["carol"].state == "left"
    finally:
        for client in clients.values():
            await client.leave()
        await carol_device.close()
        for user in users.values():
            await user.close()


async def test_clients_come_back_after_a_service_restart(stack: ServiceStack) -> None:
    service = stack.service()
    await service.start()
    clients: dict[str, ConferenceClient] = {}
    users: dict[str, MatrixUser] = {}
    try:
        room_id, users = await call_room(stack, service, ["alice", "bob"])
        devices = {name: user.device_id for name, user in users.items()}
        for name, user in users.items():
            clients[name] = ConferenceClient(
                user.client,
                room_id,
                service.bot_user_id,
                peer_connection_factory=loopback_pc,
                join_timeout=30,
            )
            await clients[name].join([ToneAudioTrack(TONES[name]), ColorVideoTrack(COLORS[name])])
        before = await check_media(clients, users, devices)
        calls = {name: c.call_id for name, c in clients.items()}

        await service.stop()
        service = stack.service()
        await service.start()

        await wait_until(
            lambda: all(c.call_id != calls[name] and c.state == "joined" for name, c in clients.items()),
            60,
            "the bot's re-invites answered",
        )
        after = await check_media(clients, users, devices)
        assert not {id(t.track) for t in before} & {id(t.track) for t in after}  # new connections
    finally:
        for client in clients.values():
            await client.leave()
        await service.stop()
        for user in users.values():
            await user.close()
