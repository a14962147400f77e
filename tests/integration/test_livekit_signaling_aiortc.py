"""The LiveKit signaling endpoint with real parts: aiohttp server, the conference hub on a real SQLite
store, the real relay on 127.0.0.1, and Python LiveKit-protocol clients (aiortc peers) exchanging
media. (Browser clients: tests/browser.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit.protocol import models, rtc
from lk_test_client import LkClient

from visio_matrix.calls.hub import ConferenceHub
from visio_matrix.calls.hub_api import Identity, Joined
from visio_matrix.client.media import ColorVideoTrack, ToneAudioTrack
from visio_matrix.clock import SystemClock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.focus.identity import livekit_room_name
from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token
from visio_matrix.focus.livekit_sdp import encode_join_request
from visio_matrix.focus.livekit_session import SERVER_VERSION
from visio_matrix.focus.livekit_signaling import LiveKitSignaling, livekit_routes
from visio_matrix.metrics import Metrics
from visio_matrix.relay import Negotiated, Relay, RelayOptions
from visio_matrix.storage import Store, open_store

pytestmark = pytest.mark.media

ROOM, OTHER_ROOM, SLOT = "!call:hs.test", "!other:hs.test", "m.call#ROOM"
KEY, SECRET = "visio-key", "a-secret-of-reasonable-length-0123456789"
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


class Members:
    def __init__(self, *users: str) -> None:
        self.users = set(users)

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return room_id in (ROOM, OTHER_ROOM) and user_id in self.users


def token(
    user: str,
    device: str,
    *,
    can_open: bool = True,
    room: str = ROOM,
    grant_room: str | None = None,
    secret: str = SECRET,
    issued: float | None = None,
    lifetime: float = 3600,
) -> str:
    return issue_token(
        api_key=KEY,
        api_secret=secret,
        identity=f"{user}:{device}",
        grants=VideoGrants(room=grant_room or livekit_room_name(room, SLOT)),
        visio=VisioClaim(user, device, room, SLOT, can_open),
        now=time.time() if issued is None else issued,
        lifetime_s=lifetime,
    )


@dataclass
class World:
    url: str
    http: aiohttp.ClientSession
    hub: ConferenceHub
    relay: Relay
    signaling: LiveKitSignaling
    clients: list[LkClient]

    def client(self, name: str, tok: str) -> LkClient:
        c = LkClient(name, self.url, tok, self.http)
        self.clients.append(c)
        return c


@pytest.fixture
async def world(tmp_path: Path, aiohttp_client: Callable[..., Any]) -> AsyncIterator[World]:
    store: Store = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    relay = Relay(
        RelayOptions(host_addresses=("127.0.0.1",), udp_port_min=44000, udp_port_max=44999), SystemClock()
    )
    members = Members("@alice:hs.test", "@bob:hs.test", "@carol:hs.test")
    policy = PolicyConfig(allowed_servers=("hs.test",))
    hub = ConferenceHub(relay, relay.events, store, members, policy, SystemClock(), Metrics())
    await hub.start()
    signaling = LiveKitSignaling(hub, {KEY: SECRET}, SystemClock())
    app = web.Application()
    app.add_routes(livekit_routes(signaling))
    server = await aiohttp_client(app)
    w = World(str(server.make_url("")).rstrip("/"), server.session, hub, relay, signaling, [])
    try:
        yield w
    finally:
        for c in w.clients:
            await c.close()
        await signaling.close()
        await hub.stop()
        await relay.close()
        await store.close()


def looks(record: Any, rgb: tuple[int, int, int]) -> bool:
    return record.last_rgb is not None and all(
        abs(a - b) < 40 for a, b in zip(record.last_rgb, rgb, strict=True)
    )


async def test_two_livekit_clients_publish_and_receive_each_other(world: World) -> None:
    alice = world.client("alice", token("@alice:hs.test", "ALICE"))
    join = await alice.connect()
    assert alice.join_delay < 5
    assert join.server_version == SERVER_VERSION and join.server_info.protocol == 17
    me = join.participant
    assert me.sid.startswith("PA_") and me.identity == "@alice:hs.test:ALICE"
    assert me.permission.can_publish and me.permission.can_subscribe
    assert join.room.sid.startswith("RM_") and join.room.name == livekit_room_name(ROOM, SLOT)
    assert not join.subscriber_primary and join.ping_interval > 0 and join.ping_timeout > join.ping_interval
    assert list(join.other_participants) == [] and list(join.ice_servers) == []
    assert {c.mime for c in join.enabled_publish_codecs} >= {"video/VP8", "audio/opus"}

    red = ColorVideoTrack(RED)
    video_info = await alice.publish(red, models.CAMERA, encryption=models.Encryption.GCM)
    audio_info = await alice.publish(ToneAudioTrack(440), models.MICROPHONE)
    assert video_info.sid.startswith("TR_") and audio_info.sid.startswith("TR_")
    assert video_info.mime_type == "video/VP8" and video_info.encryption == models.Encryption.GCM
    published = {r.track_published.cid for r in alice.of("track_published")}
    assert red.id in published

    # Bob joins the running call without the right to start one; he sees alice and her tracks.
    bob = world.client("bob", token("@bob:hs.test", "BOB", can_open=False))
    join_b = await bob.connect()
    others = {p.identity: p for p in join_b.other_participants}
    alice_info = others["@alice:hs.test:ALICE"]
    assert alice_info.sid == me.sid
    tracks = {t.sid: t for t in alice_info.tracks}
    assert set(tracks) == {video_info.sid, audio_info.sid}
    assert (
        tracks[video_info.sid].mime_type == "video/VP8" and tracks[audio_info.sid].mime_type == "audio/opus"
    )
    assert tracks[video_info.sid].encryption == models.Encryption.GCM
    assert tracks[video_info.sid].source == models.CAMERA and tracks[video_info.sid].mid
    # Her media arrives on bob's first offer's m-lines, labelled the LiveKit way.
    await bob.wait_for(
        lambda: bool(bob.receiving(me.sid, "video", 10)) and bool(bob.receiving(me.sid, "audio", 20)),
        20,
        "alice's video and audio",
    )
    video_in = bob.receiving(me.sid, "video")[0]
    assert (
        video_in.stream_id == f"{me.sid}|{video_info.sid}"
        and bob.mid_to_track[video_in.mid or ""] == video_info.sid
    )
    assert looks(video_in, RED)

    # Bob publishes: alice is told (update), asked to re-offer, and receives him.
    await bob.publish(ColorVideoTrack(GREEN), models.CAMERA)
    bob_sid = join_b.participant.sid
    await alice.wait_for(lambda: bool(alice.receiving(bob_sid, "video", 10)), 20, "bob's video")
    assert looks(alice.receiving(bob_sid, "video")[0], GREEN)
    assert alice.of("media_sections_requirement")
    assert "@bob:hs.test:BOB" in alice.participants

    # Mute is rebroadcast (update, version up); pings are answered.
    before = bob.participants["@alice:hs.test:ALICE"].version
    await alice.send(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid=video_info.sid, muted=True)))
    await bob.wait_for(
        lambda: any(
            t.muted for t in bob.participants["@alice:hs.test:ALICE"].tracks if t.sid == video_info.sid
        ),
        5,
        "alice's video muted",
    )
    assert bob.participants["@alice:hs.test:ALICE"].version > before
    await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=12345, rtt=7)))
    await alice.send(rtc.SignalRequest(ping=999))
    await alice.wait_for(lambda: bool(alice.of("pong_resp")) and bool(alice.of("pong")), 5, "pongs")
    assert alice.of("pong_resp")[0].pong_resp.last_ping_timestamp == 12345

    # Bob leaves: alice sees him go.
    await bob.send(rtc.SignalRequest(leave=rtc.LeaveRequest(action=rtc.LeaveRequest.DISCONNECT)))
    await alice.wait_for(lambda: "@bob:hs.test:BOB" not in alice.participants, 5, "bob gone")
    assert [p.identity.user_id for p in world.hub.participants(ROOM)] == ["@alice:hs.test"]


async def test_first_offer_after_join_and_three_publishers(world: World) -> None:
    # Carol does not put her offer in the join request (livekit-client's Firefox path).
    carol = world.client("carol", token("@carol:hs.test", "CAROL"))
    await carol.connect(offer_with_join=False)
    await carol.publish(ColorVideoTrack(BLUE), models.CAMERA)
    alice = world.client("alice", token("@alice:hs.test", "A"))
    await alice.connect()
    await alice.publish(ColorVideoTrack(RED), models.CAMERA)
    await alice.publish(ColorVideoTrack(GREEN), models.SCREEN_SHARE)
    await alice.publish(ToneAudioTrack(500), models.MICROPHONE)
    # Carol needs 3 more receive m-lines than the 3 + 3 she started with? No: 2 videos + 1 audio fit;
    # then a fourth video from bob needs a new one.
    bob = world.client("bob", token("@bob:hs.test", "B", can_open=False))
    await bob.connect()
    await bob.publish(ColorVideoTrack((200, 200, 20)), models.CAMERA)
    await bob.publish(ColorVideoTrack((20, 200, 200)), models.SCREEN_SHARE)
    alice_sid = alice.join.participant.sid if alice.join else ""
    bob_sid = bob.join.participant.sid if bob.join else ""
    await carol.wait_for(
        lambda: len(carol.receiving(alice_sid, "video")) == 2 and len(carol.receiving(bob_sid, "video")) == 2,
        30,
        "four videos",
    )
    video_sections = [
        t for t in carol.pc.getTransceivers() if t.kind == "video" and t.direction == "recvonly"
    ]
    assert len(video_sections) >= 4


async def test_refusals_before_the_upgrade_and_validate(world: World) -> None:
    url = world.url + "/rtc/v1"
    join_request = encode_join_request(rtc.JoinRequest())

    async def refused(query: dict[str, str]) -> tuple[int, str]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await world.http.ws_connect(url, params=query)
        async with world.http.get(world.url + "/rtc/v1/validate", params=query) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            text = await response.text()
            assert response.status == info.value.status
        return info.value.status, text

    forged = token("@alice:hs.test", "A", secret="not-the-secret-0123456789abcdef-xyz")
    status, text = await refused({"access_token": forged, "join_request": join_request})
    assert status == 401 and "bad token signature" in text
    expired = token("@alice:hs.test", "A", issued=time.time() - 7200, lifetime=600)
    status, text = await refused({"access_token": expired, "join_request": join_request})
    assert status == 401 and "expired" in text
    wrong_room = token("@alice:hs.test", "A", grant_room=livekit_room_name(OTHER_ROOM, SLOT))
    status, text = await refused({"access_token": wrong_room, "join_request": join_request})
    assert status == 401 and "room grant" in text
    status, text = await refused({"access_token": token("@alice:hs.test", "A")})
    assert status == 400 and "join_request is required" in text
    status, text = await refused({"access_token": token("@alice:hs.test", "A"), "join_request": "%%%"})
    assert status == 400
    status, text = await refused({"join_request": join_request})
    assert status == 401
    # No call in the room and a token that may not start one: LiveKit's "room does not exist".
    status, text = await refused(
        {"access_token": token("@bob:hs.test", "B", can_open=False), "join_request": join_request}
    )
    assert status == 404 and "requested room does not exist" in text

    # Refused by the hub (only on connect: validate does not ask for room membership).
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await world.http.ws_connect(
            url, params={"access_token": token("@mallory:hs.test", "M"), "join_request": join_request}
        )
    assert info.value.status == 403
    async with world.http.get(
        world.url + "/rtc/validate", params={"access_token": token("@alice:hs.test", "A")}
    ) as response:
        assert response.status == 200 and await response.text() == "success"
    assert world.hub.participants(ROOM) == ()


async def test_bad_messages_are_ignored_and_resume_gets_leave_reconnect(world: World) -> None:
    alice = world.client("alice", token("@alice:hs.test", "A"))
    await alice.connect()
    assert alice.ws is not None
    await alice.ws.send_bytes(b"\xff\xff\xff not a protobuf")
    await alice.send(rtc.SignalRequest())  # no message set
    await alice.send(rtc.SignalRequest(subscription=rtc.UpdateSubscription(subscribe=True)))
    await alice.send(rtc.SignalRequest(simulate=rtc.SimulateScenario(speaker_update=3)))
    await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
    await alice.wait_for(lambda: bool(alice.of("pong_resp")), 5, "a pong after the junk")
    assert not alice.ws.closed and len(world.hub.participants(ROOM)) == 1

    resume = rtc.JoinRequest(reconnect=True, participant_sid=alice.join.participant.sid if alice.join else "")
    ws = await world.http.ws_connect(
        world.url + "/rtc/v1",
        params={"access_token": token("@alice:hs.test", "A"), "join_request": encode_join_request(resume)},
    )
    first = rtc.SignalResponse.FromString((await ws.receive()).data)
    assert first.leave.action == rtc.LeaveRequest.RECONNECT
    await ws.close()


class NativeLink:
    """A Matrix-native participant (relay offers), answered by an aiortc peer."""

    def __init__(self) -> None:
        self.offers: asyncio.Queue[Negotiated] = asyncio.Queue()

    async def send_offer(self, negotiated: Negotiated) -> None:
        await self.offers.put(negotiated)

    async def closed(self, reason: str) -> None:
        pass


async def test_matrix_native_participant_appears_to_livekit_clients(world: World) -> None:
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from visio_matrix.relay import restrict_ice

    alice = world.client("alice", token("@alice:hs.test", "A"))
    await alice.connect()
    await alice.publish(ColorVideoTrack(RED), models.CAMERA)

    pc = restrict_ice(
        RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)),
        ["127.0.0.1"],
    )
    pc.addTrack(ColorVideoTrack(BLUE))
    pc.addTrack(ToneAudioTrack(700))
    link = NativeLink()
    decoded: list[Any] = []  # video frames the native participant decodes (alice's)

    async def consume(track: Any) -> None:
        while True:
            try:
                decoded.append(await track.recv())
            except Exception:
                return

    readers: list[asyncio.Task[None]] = []
    pc.on(
        "track",
        lambda track: (
            readers.append(asyncio.get_running_loop().create_task(consume(track)))
            if track.kind == "video"
            else None
        ),
    )
    try:
        await pc.setLocalDescription(await pc.createOffer())
        joined: Joined = await world.hub.join(
            ROOM,
            Identity("@bob:hs.test", "NATIVE"),
            link,
            transport="todevice",
            offer_sdp=pc.localDescription.sdp,
        )
        await pc.setRemoteDescription(RTCSessionDescription(joined.negotiated.sdp, "answer"))

        async def answer_offers() -> None:
            while True:
                offer = await link.offers.get()
                await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                await world.hub.accept_answer(joined.participant_id, pc.localDescription.sdp)

        answering = asyncio.get_running_loop().create_task(answer_offers())
        try:
            await alice.wait_for(
                lambda: bool(alice.receiving(joined.participant_id, "video", 10)),
                20,
                "the native participant's video",
            )
            native = alice.participants["@bob:hs.test:NATIVE"]
            assert native.sid == joined.participant_id
            assert sorted(t.type for t in native.tracks) == [models.AUDIO, models.VIDEO]
            assert all(t.mime_type and t.sid.startswith("TR_") for t in native.tracks)
            assert looks(alice.receiving(joined.participant_id, "video")[0], BLUE)
            # And the other way: the native participant decodes alice's video.
            await alice.wait_for(lambda: len(decoded) >= 10, 20, "the native participant decoding alice")
            rgb = decoded[-1].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
            assert abs(rgb[0] - RED[0]) < 40 and abs(rgb[2] - RED[2]) < 40
        finally:
            answering.cancel()
            for reader in readers:
                reader.cancel()
    finally:
        await pc.close()
