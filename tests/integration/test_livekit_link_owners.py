"""A federation link's far-side users, as LiveKit clients see them (issue 5), with real parts: the
aiohttp LiveKit endpoint, the conference hub on a real SQLite store, the real relay on 127.0.0.1, a
Python LiveKit-protocol client (aiortc) and an aiortc peer standing for another ministry's relay.

The link joins through the hub with the link role and publishes two far-side users' streams
(one msid stream each, owners given by ``stream_owners``). The LiveKit clients must see those two
users (never the link's bot) and decode each one's colour from that user's own track.
"""

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
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from livekit.protocol import models
from lk_test_client import LkClient

from visio_matrix.calls.hub import ConferenceHub
from visio_matrix.calls.hub_api import Identity, RelayLinkOptions
from visio_matrix.client.media import ColorVideoTrack, ToneAudioTrack
from visio_matrix.clock import SystemClock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.focus.identity import livekit_room_name
from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token
from visio_matrix.focus.livekit_room import owner_sid
from visio_matrix.focus.livekit_signaling import LiveKitSignaling, livekit_routes
from visio_matrix.metrics import Metrics
from visio_matrix.relay import Negotiated, Relay, RelayOptions, restrict_ice
from visio_matrix.storage import Store, open_store

pytestmark = pytest.mark.media

ROOM, SLOT = "!call:a.test", "m.call#ROOM"
KEY, SECRET = "visio-key", "a-secret-of-reasonable-length-0123456789"
BOT = Identity("@visio:b.test", "BOTDEV")
U1 = {"user_id": "@u1:b.test", "device_id": "U1DEV"}
U2 = {"user_id": "@u2:b.test", "device_id": "U2DEV"}
RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 230, 20)


class Members:
    def __init__(self, *users: str) -> None:
        self.users = set(users)

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return room_id == ROOM and user_id in self.users


def token(user: str, device: str) -> str:
    return issue_token(
        api_key=KEY,
        api_secret=SECRET,
        identity=f"{user}:{device}",
        grants=VideoGrants(room=livekit_room_name(ROOM, SLOT)),
        visio=VisioClaim(user, device, ROOM, SLOT, True),
        now=time.time(),
        lifetime_s=3600,
    )


@dataclass
class World:
    url: str
    http: aiohttp.ClientSession
    hub: ConferenceHub
    clients: list[LkClient]

    def client(self, name: str, tok: str) -> LkClient:
        c = LkClient(name, self.url, tok, self.http)
        self.clients.append(c)
        return c


@pytest.fixture
async def world(tmp_path: Path, aiohttp_client: Callable[..., Any]) -> AsyncIterator[World]:
    store: Store = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    relay = Relay(
        RelayOptions(host_addresses=("127.0.0.1",), udp_port_min=45000, udp_port_max=45999), SystemClock()
    )
    members = Members("@alice:a.test", "@bob:a.test", BOT.user_id)
    hub = ConferenceHub(
        relay,
        relay.events,
        store,
        members,
        PolicyConfig(allowed_servers=("a.test",)),
        SystemClock(),
        Metrics(),
    )
    await hub.start()
    signaling = LiveKitSignaling(hub, {KEY: SECRET}, SystemClock())
    app = web.Application()
    app.add_routes(livekit_routes(signaling))
    server = await aiohttp_client(app)
    w = World(str(server.make_url("")).rstrip("/"), server.session, hub, [])
    try:
        yield w
    finally:
        for c in w.clients:
            await c.close()
        await signaling.close()
        await hub.stop()
        await relay.close()
        await store.close()


class FarRelay:
    """Another ministry's relay, as one aiortc peer: one msid stream (audio + video) per far-side
    user; it answers the hub's offers (the local publishers it receives)."""

    def __init__(self, hub: ConferenceHub, users: list[tuple[str, tuple[int, int, int], float]]) -> None:
        self.hub = hub
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pc = restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])
        for stream_id, rgb, tone in users:
            tracks: list[MediaStreamTrack] = [ToneAudioTrack(tone), ColorVideoTrack(rgb)]
            for track in tracks:
                self.pc.addTrack(track)._stream_id = stream_id  # one msid stream per far-side user
        self.offers: asyncio.Queue[Negotiated] = asyncio.Queue()
        self.participant_id = ""
        self._answering: asyncio.Task[None] | None = None

    async def send_offer(self, negotiated: Negotiated) -> None:
        await self.offers.put(negotiated)

    async def closed(self, reason: str) -> None:
        pass

    async def join(self, owners: dict[str, dict[str, str]]) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        joined = await self.hub.join(
            ROOM,
            BOT,
            self,
            transport="federation",
            offer_sdp=self.pc.localDescription.sdp,
            relay_link=RelayLinkOptions(server_name="b.test", stream_owners=owners),
        )
        self.participant_id = joined.participant_id
        await self.pc.setRemoteDescription(RTCSessionDescription(joined.negotiated.sdp, "answer"))
        self._answering = asyncio.get_running_loop().create_task(self._answer_offers())

    async def _answer_offers(self) -> None:
        while True:
            offer = await self.offers.get()
            await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.hub.accept_answer(self.participant_id, self.pc.localDescription.sdp)

    async def close(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
            await asyncio.gather(self._answering, return_exceptions=True)
        await self.pc.close()


def looks(client: LkClient, sid: str, rgb: tuple[int, int, int]) -> bool:
    videos = client.receiving(sid, "video", 10)
    return any(
        v.last_rgb is not None and all(abs(a - b) < 40 for a, b in zip(v.last_rgb, rgb, strict=True))
        for v in videos
    )


async def test_livekit_clients_see_each_far_side_user_of_a_link(world: World) -> None:
    alice = world.client("alice", token("@alice:a.test", "ALICE"))
    await alice.connect()
    await alice.publish(ColorVideoTrack(GREEN), models.CAMERA)

    far = FarRelay(world.hub, [("u1-stream", RED, 440.0), ("u2-stream", BLUE, 1000.0)])
    try:
        await far.join({"u1-stream": U1, "u2-stream": U2})
        link = far.participant_id
        u1_sid = owner_sid(link, (U1["user_id"], U1["device_id"]))
        u2_sid = owner_sid(link, (U2["user_id"], U2["device_id"]))
        identities = {"@u1:b.test:U1DEV": u1_sid, "@u2:b.test:U2DEV": u2_sid}

        # Alice (in the call before the link came) is told about two far-side users, not the link.
        await alice.wait_for(
            lambda: looks(alice, u1_sid, RED) and looks(alice, u2_sid, BLUE),
            30,
            "each far-side user's colour on that user's own track",
        )
        assert {i: p.sid for i, p in alice.participants.items()} == identities
        announced = [p for m in alice.of("update") for p in m.update.participants]
        assert all(p.sid != link and p.identity != "@visio:b.test:BOTDEV" for p in announced)
        for identity, sid in identities.items():
            info = alice.participants[identity]
            assert info.name == identity.rsplit(":", 1)[0]
            assert sorted(t.type for t in info.tracks) == [models.AUDIO, models.VIDEO]
            # every track alice receives from this user is one the update gave her, by mid and msid
            received = alice.receiving(sid, "video", 10) + alice.receiving(sid, "audio", 0)
            assert len(received) == 2
            track_sids = {t.sid for t in info.tracks}
            for r in received:
                assert alice.mid_to_track[r.mid or ""] in track_sids
                assert r.stream_id == f"{sid}|{alice.mid_to_track[r.mid or '']}"

        # Bob joins later: the join response already names the two far-side users with their tracks.
        bob = world.client("bob", token("@bob:a.test", "BOB"))
        join = await bob.connect()
        others = {p.identity: p for p in join.other_participants}
        assert {i: others[i].sid for i in identities} == identities
        assert set(others) == {*identities, "@alice:a.test:ALICE"}
        assert all(len(others[i].tracks) == 2 for i in identities)
        await bob.wait_for(
            lambda: looks(bob, u1_sid, RED) and looks(bob, u2_sid, BLUE), 30, "both far-side users' colours"
        )

        # The link leaves: both far-side users are gone for every LiveKit client.
        await world.hub.leave(link)
        await alice.wait_for(lambda: not set(identities) & set(alice.participants), 10, "the users gone")
        await bob.wait_for(lambda: not set(identities) & set(bob.participants), 10, "the users gone")
        gone = [
            p
            for m in alice.of("update")
            for p in m.update.participants
            if p.state == models.ParticipantInfo.DISCONNECTED
        ]
        assert sorted(p.identity for p in gone) == sorted(identities)
        assert "@alice:a.test:ALICE" in bob.participants
    finally:
        await far.close()
