"""Calls from encrypted rooms, end to end: real Synapse, the real service, reference clients, real media.

Covers the user's main path (three people in a call, each getting the other two's audio and video
under the right Matrix identities), that the homeserver never stores SDP in clear, and access
control: a non-member is refused, a kicked member is dropped within 2 s, hostile signaling gets a
clear hangup without disturbing the others; and a restart of the service brings participants back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import pytest
import pytest_asyncio
from synapse_fixtures import PASSWORD, ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.client.matrix import VisioMatrixClient, login_client
from visio_matrix.client.media import MediaProbe
from visio_matrix.client.session import CallHungUp, ConferenceClient
from visio_matrix.crypto.todevice import SecureToDevice
from visio_matrix.devstack.call_check import ColorVideoTrack, ToneAudioTrack, loopback_pc, run_call
from visio_matrix.devstack.synapse import LocalSynapse
from visio_matrix.devstack.user import MatrixUser, MessageView

pytestmark = [pytest.mark.synapse, pytest.mark.media]


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    return await service_stack(synapse_factory, tmp_path_factory, "calls")


async def user(stack: ServiceStack, prefix: str) -> tuple[MatrixUser, str]:
    matrix = await stack.new_user(prefix)
    return matrix, matrix.user_id


async def client(stack: ServiceStack, user_id: str) -> VisioMatrixClient:
    """Another device of ``user_id``, logged in with the reference client library."""
    return await login_client(
        stack.hs.base_url, user_id, PASSWORD, stack.workdir / "clients" / f"{user_id}-{time.time_ns()}"
    )


def said(bot: str, prefix: str) -> Any:
    return lambda m: m.sender == bot and (m.body or "").startswith(prefix)


async def call_room(owner: MatrixUser, service: Service, members: list[MatrixUser]) -> str:
    room_id = await owner.create_room(
        "call room", invite=[service.bot_user_id] + [m.user_id for m in members], encrypted=True
    )
    for m in members:
        await m.join(room_id)
    await owner.wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)
    await owner.wait_for_message(room_id, said(service.bot_user_id, "Hello!"), timeout=30)
    return room_id


async def start_call(owner: MatrixUser, service: Service, room_id: str) -> MessageView:
    await owner.send_text(room_id, "!visio start")
    return await owner.wait_for_message(room_id, said(service.bot_user_id, "📞 Call started"), timeout=30)


def synapse_rows_containing(hs: LocalSynapse, needle: str) -> int:
    """Rows of Synapse's own event and to-device tables whose JSON contains ``needle``."""
    with sqlite3.connect(f"file:{hs.database_path}?mode=ro", uri=True) as db:
        count = 0
        for table, column in (("event_json", "json"), ("device_inbox", "message_json")):
            (n,) = db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE instr({column}, ?) > 0", (needle,)
            ).fetchone()
            count += n
        return int(count)


class Joiner:
    """One reference-client participant publishing a colour and a tone."""

    def __init__(self, matrix: VisioMatrixClient, room_id: str, bot: str, index: int) -> None:
        self.matrix = matrix
        self.video = ColorVideoTrack((60 * index % 255, 200, 40))
        self.audio = ToneAudioTrack(400 + 100 * index)
        self.call = ConferenceClient(
            matrix.client, room_id, bot, channel=matrix.to_device, peer_connection_factory=loopback_pc
        )
        self.probe = MediaProbe()

    async def join(self) -> None:
        await self.call.join([self.audio, self.video])

    async def frames_from(self, user_id: str, timeout: float = 20) -> int:
        """Wait for video from ``user_id`` and return how many frames arrived in the next 0.5 s."""
        deadline = time.monotonic() + timeout
        watched: dict[int, Any] = {}
        while True:
            track = await self.call.wait_for_track(user_id, "video", max(0.1, deadline - time.monotonic()))
            received = watched.get(id(track.track))
            if received is None:  # a renegotiation may give the same sender a new receiver track
                received = watched[id(track.track)] = self.probe.watch(track.track)
            try:
                await asyncio.wait_for(received.got_frame.wait(), 0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        print(f"frames from {user_id}: {len(watched)} receiver track(s) watched")
        await asyncio.sleep(0.5)
        return int(received.frames)

    async def close(self) -> None:
        await self.call.leave()
        await self.probe.close()
        self.video.stop()
        self.audio.stop()
        await self.matrix.close()


async def test_three_people_get_each_others_media_and_no_sdp_reaches_the_homeserver_in_clear(
    stack: ServiceStack, service: Service
) -> None:
    alice, alice_id = await user(stack, "alice")
    bob, bob_id = await user(stack, "bob")
    carol, carol_id = await user(stack, "carol")
    try:
        room_id = await call_room(alice, service, [bob, carol])
        result = await run_call(
            stack.hs.base_url,
            service.bot_user_id,
            room_id,
            alice,
            [(alice_id, PASSWORD), (bob_id, PASSWORD), (carol_id, PASSWORD)],
            stack.workdir / "call-clients",
        )
        for report in result.reports:
            others = {alice_id, bob_id, carol_id} - {report.user_id}
            assert set(report.peers) == others, report.line()
            assert report.error is None, report.line()
            # content-checked: each one's colour and pitch, under that one's Matrix identity
            assert report.content_ok, report.line()
            for peer in report.peers.values():
                assert peer.video is not None and peer.video.frames > 5, report.line()
                assert peer.audio is not None and peer.audio.frames > 5, report.line()
        # The status message was edited while people joined, and the summary names everyone.
        summary = await alice.wait_for_message(
            room_id, said(service.bot_user_id, "📴 Call ended"), timeout=30
        )
        assert summary.body is not None
        assert all(u in summary.body for u in (alice_id, bob_id, carol_id))
        edits = [
            m
            for m in alice.messages(room_id)
            if m.sender == service.bot_user_id
            and m.content.get("m.relates_to", {}).get("rel_type") == "m.replace"
        ]
        assert edits, "the call's status message was never edited"
    finally:
        for u in (alice, bob, carol):
            await u.close()
    # The homeserver stored the call (encrypted) but no SDP in clear; the same search finds clear text.
    assert synapse_rows_containing(stack.hs, "call room") > 0  # the room name: stored in clear, found
    assert synapse_rows_containing(stack.hs, "a=fingerprint") == 0
    assert synapse_rows_containing(stack.hs, "a=candidate") == 0
    assert synapse_rows_containing(stack.hs, "a=ice-ufrag") == 0


async def test_non_member_is_refused_with_a_clear_reason(stack: ServiceStack, service: Service) -> None:
    alice, _ = await user(stack, "alice")
    _, mallory_id = await user(stack, "mallory")
    mallory = await client(stack, mallory_id)
    joiner = None
    try:
        room_id = await call_room(alice, service, [])
        await start_call(alice, service, room_id)
        joiner = Joiner(mallory, room_id, service.bot_user_id, 1)
        with pytest.raises(CallHungUp) as caught:
            await joiner.join()
        assert caught.value.reason == "not_a_member"
        assert service.hub.participants(room_id) == ()
    finally:
        if joiner is not None:
            await joiner.close()
        else:
            await mallory.close()
        await alice.close()


async def test_kicked_member_is_dropped_within_two_seconds(stack: ServiceStack, service: Service) -> None:
    alice, alice_id = await user(stack, "alice")
    bob, bob_id = await user(stack, "bob")
    a = b = None
    try:
        room_id = await call_room(alice, service, [bob])
        await start_call(alice, service, room_id)
        a = Joiner(await client(stack, alice_id), room_id, service.bot_user_id, 1)
        b = Joiner(await client(stack, bob_id), room_id, service.bot_user_id, 2)
        await asyncio.gather(a.join(), b.join())
        assert await a.frames_from(bob_id) > 0 and await b.frames_from(alice_id) > 0
        kicked_at = time.monotonic()
        await alice.kick(room_id, bob_id, "bye")
        while b.call.hangup_reason is None and time.monotonic() - kicked_at < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - kicked_at
        assert b.call.hangup_reason == "not_a_member"
        assert elapsed < 2.0, f"dropped after {elapsed:.2f}s"
        assert [p.identity.user_id for p in service.hub.participants(room_id)] == [alice_id]
    finally:
        for j in (a, b):
            if j is not None:
                await j.close()
        await alice.close()
        await bob.close()


async def test_hostile_signaling_gets_a_clear_hangup_and_others_keep_their_call(
    stack: ServiceStack, service: Service
) -> None:
    alice, alice_id = await user(stack, "alice")
    bob, bob_id = await user(stack, "bob")
    a = b = None
    raw = await client(stack, bob_id)  # bob's second device, speaking raw to-device messages
    replies: asyncio.Queue[SecureToDevice] = asyncio.Queue()
    raw.to_device.add_handler(replies.put)
    try:
        room_id = await call_room(alice, service, [bob])
        await start_call(alice, service, room_id)
        a = Joiner(await client(stack, alice_id), room_id, service.bot_user_id, 1)
        b = Joiner(await client(stack, bob_id), room_id, service.bot_user_id, 2)
        await asyncio.gather(a.join(), b.join())
        assert await a.frames_from(bob_id) > 0
        bot_device = service.device.device_id
        group = {
            "conf_id": "",
            "device_id": raw.device_id,
            "sender_session_id": "s",
            "dest_session_id": "",
            "seq": 1,
        }
        base = {"call_id": "hostile1", "party_id": "p", "version": "1", "lifetime": 30000, "room_id": room_id}
        hostile = [
            {
                **base,
                **group,
                "offer": {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 3_000},
            },  # 15 KB (the homeserver caps to-device messages at 64 KB)
            {**base, **group, "call_id": "hostile2", "offer": {"type": "offer", "sdp": 5}},
            {**base, **group, "call_id": "hostile3"},  # no offer at all
            {**base, **group, "call_id": "hostile4", "offer": {"type": "offer", "sdp": "not an sdp"}},
        ]
        for content in hostile:
            await raw.to_device.send(service.bot_user_id, bot_device, "m.call.invite", content)
        reasons: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while len(reasons) < len(hostile) and time.monotonic() < deadline:
            msg = await asyncio.wait_for(replies.get(), max(0.1, deadline - time.monotonic()))
            if msg.type == "m.call.hangup":
                reasons[msg.content["call_id"]] = msg.content.get("io.visio.reason", "")
                assert msg.content.get("io.visio.message"), msg.content
        assert reasons == {
            "hostile1": "bad_request",
            "hostile2": "bad_request",
            "hostile3": "bad_request",
            "hostile4": "bad_request",
        }
        # Alice and Bob's first device are still in the call, media still flowing both ways.
        assert {p.identity.user_id for p in service.hub.participants(room_id)} == {alice_id, bob_id}
        assert await b.frames_from(alice_id) > 0
    finally:
        for j in (a, b):
            if j is not None:
                await j.close()
        await raw.close()
        await alice.close()
        await bob.close()


async def test_restart_brings_participants_back_within_five_seconds(stack: ServiceStack) -> None:
    alice, alice_id = await user(stack, "alice")
    bob, bob_id = await user(stack, "bob")
    svc = stack.service()
    await svc.start()
    a = b = None
    try:
        room_id = await call_room(alice, svc, [bob])
        await start_call(alice, svc, room_id)
        a = Joiner(await client(stack, alice_id), room_id, svc.bot_user_id, 1)
        b = Joiner(await client(stack, bob_id), room_id, svc.bot_user_id, 2)
        await asyncio.gather(a.join(), b.join())
        assert await a.frames_from(bob_id) > 0
        first_calls = (a.call.call_id, b.call.call_id)
        await svc.stop()
        svc = stack.service()
        restarted = time.monotonic()
        await svc.start()
        ready = time.monotonic()
        # Both are re-invited by the bot (new call ids) and see each other again.
        while (a.call.call_id, b.call.call_id) == first_calls or any(
            c.call.state != "joined" for c in (a, b)
        ):
            assert time.monotonic() - ready < 5, "participants not back within 5 s of the restart"
            await asyncio.sleep(0.05)
        assert await a.frames_from(bob_id, timeout=5) > 0
        assert await b.frames_from(alice_id, timeout=5) > 0
        back_after = time.monotonic() - ready
        assert back_after < 5.0, f"media back {back_after:.2f}s after the service was ready"
        print(f"restart: service start {ready - restarted:.2f}s, media back {back_after:.2f}s later")
    finally:
        for j in (a, b):
            if j is not None:
                await j.close()
        await svc.stop()
        await alice.close()
        await bob.close()


async def test_the_call_is_a_room_widget_while_it_runs_when_the_bot_may_add_one(
    stack: ServiceStack, service: Service
) -> None:
    alice, _ = await user(stack, "alice")
    try:
        room_id = await call_room(alice, service, [])
        await alice.set_power_level(room_id, service.bot_user_id, 50)  # state_default: widgets allowed
        await start_call(alice, service, room_id)

        async def widget() -> dict[str, Any]:
            resp = await alice.client.room_get_state_event(room_id, "im.vector.modular.widgets", "visio-call")
            return dict(getattr(resp, "content", {}) or {})

        deadline = time.monotonic() + 10
        while not (await widget()).get("url") and time.monotonic() < deadline:  # noqa: ASYNC110 (polls the server)
            await asyncio.sleep(0.1)
        content = await widget()
        assert content["type"] == "m.custom" and content["name"] == "Visio"
        assert "/call/" in content["url"] and "$matrix_room_id" in content["url"]
        await alice.send_text(room_id, "!visio stop")
        await alice.wait_for_message(room_id, said(service.bot_user_id, "📴 Call ended"), timeout=30)
        deadline = time.monotonic() + 10
        while (await widget()).get("url") and time.monotonic() < deadline:  # noqa: ASYNC110 (polls the server)
            await asyncio.sleep(0.1)
        assert await widget() == {}  # removed when the call ended
    finally:
        await alice.close()
