"""Unmodified livekit-client in headless Chromium against our MatrixRTC focus, end to end.

Real parts only: a Synapse homeserver with our appservice registration, the whole service
(`visio_matrix.app.Service`: bot, hub, relay, token service, LiveKit signaling), and browser pages
running livekit-client 2.23 from npm. Each page gets a Matrix OpenID token (issued by Synapse to a
user who is a member of a real room with the bot), asks the token service for a LiveKit token
itself (cross-origin `POST /sfu/get`, like Element Call), connects to our `/rtc/v1`, publishes
its fake camera + microphone, and must decode the other's video and receive its audio - also with
livekit-client's end-to-end encryption on (and, as a control, a page with another key receives
the packets but decodes nothing and reports decryption errors). Forged, tampered and expired
LiveKit tokens are refused by the signaling endpoint with a clear error that livekit-client
reports. A browser participant and a Python participant of the reference client (Matrix-native,
Olm-encrypted to-device signaling with the bot) exchange media in one conference.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from browser_harness import HarnessPage, OpenPage, page_url
from synapse_fixtures import ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.client import ConferenceClient
from visio_matrix.client.media import ColorVideoTrack, Received, ToneAudioTrack
from visio_matrix.devstack.call_check import loopback_pc
from visio_matrix.devstack.user import MatrixUser
from visio_matrix.focus.identity import LEGACY_SLOT_ID, livekit_room_name
from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token

pytestmark = [pytest.mark.browser, pytest.mark.synapse]

MEDIA_TIMEOUT = 40.0
BOB_GREEN = (20, 230, 20)


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    """One Synapse with our registration (and our focus advertised) for the whole session."""
    return await service_stack(synapse_factory, tmp_path_factory, "visio-focus", advertise_focus=True)


@dataclass
class CallRoom:
    room_id: str
    users: list[MatrixUser]


@pytest_asyncio.fixture
async def call_room(stack: ServiceStack, service: Service) -> AsyncIterator[CallRoom]:
    """An encrypted room with the bot and two joined users (alice created it)."""
    alice, bob = await stack.new_user("alice"), await stack.new_user("bob")
    try:
        room_id = await alice.create_room("call", invite=[service.bot_user_id, bob.user_id], encrypted=True)
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)
        await alice.wait_for_membership(room_id, bob.user_id, "join", timeout=30)
        yield CallRoom(room_id, [alice, bob])
    finally:
        await alice.close()
        await bob.close()


def _close(rgb: list[float], want: tuple[int, int, int], tolerance: float = 40) -> bool:
    return all(abs(a - b) < tolerance for a, b in zip(rgb, want, strict=True))


async def _count_frames(track: MediaStreamTrack, received: Received) -> None:
    try:
        while True:
            await track.recv()
            received.frames += 1
    except MediaStreamError:
        return


def legacy_identity(user: MatrixUser) -> str:
    """What lk-jwt-service's /sfu/get issues: `@user:server:DEVICE`."""
    return f"{user.user_id}:{user.device_id}"


async def sfu_get_body(user: MatrixUser, room_id: str) -> dict[str, Any]:
    return {"room": room_id, "openid_token": await user.get_openid_token(), "device_id": user.device_id}


async def join_from_browser(
    page: HarnessPage,
    service: Service,
    user: MatrixUser,
    room_id: str,
    e2ee_key: str | None = None,
    publish: bool = True,
) -> dict[str, Any]:
    """The page asks /sfu/get for a token with the user's OpenID token, then connects and publishes."""
    options: dict[str, Any] = {
        "tokenUrl": service.config.focus.public_url.rstrip("/") + "/sfu/get",
        "body": await sfu_get_body(user, room_id),
        "publish": publish,
    }
    if e2ee_key is not None:
        options["e2eeKey"] = e2ee_key
    result: dict[str, Any] = await page.call("lkJoin", options)
    assert result["ok"], f"{page.name} could not join: {result}\n{await page.describe()}"
    assert result["identity"] == legacy_identity(user)
    assert result["url"] == service.config.focus.livekit_url
    return result


def received_from(other: str) -> Any:
    """Poll predicate: video frames decoded and audio packets received from participant `other`."""

    def done(stats: dict[str, Any]) -> bool:
        got = stats["remote"].get(other)
        return bool(got and got["video"]["framesDecoded"] > 5 and got["audio"]["packetsReceived"] > 10)

    return done


async def two_browsers_in_call(
    harness_url: str, pages: OpenPage, service: Service, room: CallRoom, e2ee_key: str | None
) -> tuple[list[HarnessPage], list[dict[str, Any]]]:
    """Both users join from their own page; each page decodes the other's video and receives its audio."""
    joined = []
    browser_pages = []
    for user in room.users:
        page = await pages(page_url(harness_url), user.user_id)
        browser_pages.append(page)
        joined.append(await join_from_browser(page, service, user, room.room_id, e2ee_key))
    identities = [legacy_identity(u) for u in room.users]
    stats = []
    for page, other in zip(browser_pages, reversed(identities), strict=True):
        got = await page.poll("lkStats", received_from(other), timeout=MEDIA_TIMEOUT)
        assert got["state"] == "connected"
        assert got["remote"][other]["audio"]["bytesReceived"] > 0
        assert got["remote"][other]["video"]["bytesReceived"] > 0
        stats.append(got)
    # Both are in the same conference on the relay, as the hub sees it.
    in_hub = {(p.identity.user_id, p.identity.device_id) for p in service.hub.participants(room.room_id)}
    assert in_hub == {(u.user_id, u.device_id) for u in room.users}
    return browser_pages, stats


async def test_two_browsers_exchange_media(
    harness_url: str, pages: OpenPage, service: Service, call_room: CallRoom
) -> None:
    _, stats = await two_browsers_in_call(harness_url, pages, service, call_room, e2ee_key=None)
    for got in stats:
        assert got["e2ee"] is False
        assert got["encryptionErrors"] == []


async def test_two_browsers_exchange_media_end_to_end_encrypted(
    harness_url: str, pages: OpenPage, service: Service, call_room: CallRoom
) -> None:
    browser_pages, stats = await two_browsers_in_call(
        harness_url, pages, service, call_room, e2ee_key="shared call key"
    )
    identities = [legacy_identity(u) for u in call_room.users]
    for page, got, other in zip(browser_pages, stats, reversed(identities), strict=True):
        assert got["e2ee"] is True
        assert got["encryptionErrors"] == [], await page.describe()
        # livekit-client marks a participant encrypted when all its published tracks are.
        assert got["participants"][other]["encrypted"] is True
        assert got["localEncrypted"] is True


async def test_e2ee_with_different_keys_decodes_nothing(
    harness_url: str, pages: OpenPage, service: Service, call_room: CallRoom
) -> None:
    """Control for the test above: the frames really are encrypted end to end (the relay forwards
    ciphertext), so a participant with another key receives packets but cannot decode a frame, and
    livekit-client reports decryption errors."""
    alice, bob = call_room.users
    alice_page = await pages(page_url(harness_url), "alice")
    bob_page = await pages(page_url(harness_url), "bob")
    await join_from_browser(alice_page, service, alice, call_room.room_id, e2ee_key="alice's key")
    await join_from_browser(bob_page, service, bob, call_room.room_id, e2ee_key="another key")

    def packets_arrived(stats: dict[str, Any]) -> bool:
        got = stats["remote"].get(legacy_identity(alice))
        return bool(got and got["video"]["packetsReceived"] > 100)

    stats = await bob_page.poll("lkStats", packets_arrived, timeout=MEDIA_TIMEOUT)
    assert stats["remote"][legacy_identity(alice)]["video"]["framesDecoded"] == 0, stats
    # ... and livekit-client reports why (which also shows the listener the test above relies on works).
    errors = (await bob_page.poll("lkStats", lambda s: s["encryptionErrors"], timeout=10))["encryptionErrors"]
    assert {e["identity"] for e in errors} == {legacy_identity(alice)}
    assert all("Decryption failed" in e["message"] for e in errors), errors


def refused_tokens(service: Service, user: MatrixUser, room_id: str) -> dict[str, str]:
    """LiveKit tokens for the right room that the focus must refuse: signed with another secret,
    signed with the right secret but expired an hour ago, and a good token with a tampered payload."""
    config = service.config.focus
    common: dict[str, Any] = {
        "api_key": config.api_key,
        "identity": legacy_identity(user),
        "grants": VideoGrants(room=livekit_room_name(room_id, LEGACY_SLOT_ID)),
        "visio": VisioClaim(
            user_id=user.user_id,
            device_id=user.device_id,
            room_id=room_id,
            slot_id=LEGACY_SLOT_ID,
            can_open=True,
        ),
    }
    now = service.clock.wall_ms() / 1000
    wrong_secret = issue_token(
        api_secret="another secret, 32 bytes or longer!", now=now, lifetime_s=3600, **common
    )
    expired = issue_token(api_secret=config.api_secret, now=now - 7200, lifetime_s=3600, **common)
    header, payload, signature = issue_token(
        api_secret=config.api_secret, now=now, lifetime_s=3600, **common
    ).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["io.visio"]["user_id"] = "@mallory:elsewhere"
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return {
        "wrong secret": wrong_secret,
        "expired": expired,
        "tampered": f"{header}.{tampered}.{signature}",
    }


async def test_forged_and_expired_tokens_refused(
    harness_url: str, pages: OpenPage, service: Service, call_room: CallRoom
) -> None:
    alice = call_room.users[0]
    page = await pages(page_url(harness_url), "mallory")
    expected = {"wrong secret": "signature", "tampered": "signature", "expired": "expired"}
    for what, token in refused_tokens(service, alice, call_room.room_id).items():
        result = await page.call("lkConnect", {"url": service.config.focus.livekit_url, "token": token})
        assert result["ok"] is False, what
        error = result["error"]
        assert error["name"] == "ConnectionError", (what, error)
        # ConnectionErrorReason.NotAllowed (livekit-client 2.23 copies `reason` but leaves a stale
        # `reasonName` when it wraps the signal error), with the status and text of /rtc/v1/validate.
        assert error["reason"] == 0, (what, error)
        assert error["status"] == 401, (what, error)
        assert "invalid authorization token" in error["message"], (what, error)
        assert expected[what] in error["message"], (what, error)
    assert service.hub.participants(call_room.room_id) == ()
    # Control: the same page, with a token from the token service, gets in.
    await join_from_browser(page, service, alice, call_room.room_id, publish=False)
    assert len(service.hub.participants(call_room.room_id)) == 1


async def test_browser_and_matrix_native_python_participant(
    harness_url: str, pages: OpenPage, service: Service, call_room: CallRoom
) -> None:
    """One conference, two transports: alice in the browser (livekit-client, /rtc/v1), bob in Python
    (reference client, Olm-encrypted to-device signaling with the bot). Each gets the other's media;
    the browser shows bob's green picture and knows him by his LiveKit-style identity."""
    alice, bob = call_room.users
    await alice.send_text(call_room.room_id, "!visio start")
    await alice.wait_for_message(
        call_room.room_id,
        lambda m: m.sender == service.bot_user_id and (m.body or "").startswith("📞 Call started"),
        timeout=30,
    )
    bob_client = ConferenceClient(
        bob.client,
        call_room.room_id,
        service.bot_user_id,
        peer_connection_factory=loopback_pc,
        join_timeout=30,
    )
    received = {"video": Received("video"), "audio": Received("audio")}
    readers: list[asyncio.Task[None]] = []
    try:
        await bob_client.join([ToneAudioTrack(1000.0), ColorVideoTrack(BOB_GREEN)])
        page = await pages(page_url(harness_url), "alice")
        await join_from_browser(page, service, alice, call_room.room_id)

        # The browser decodes bob's video and receives his audio, under bob's LiveKit identity.
        await page.poll("lkStats", received_from(legacy_identity(bob)), timeout=MEDIA_TIMEOUT)
        deadline = time.monotonic() + 15
        while True:
            color = await page.call("lkVideoColor", legacy_identity(bob))
            if color is not None and _close(color, BOB_GREEN):
                break
            assert time.monotonic() < deadline, f"alice's page shows {color} for bob, expected {BOB_GREEN}"
            await asyncio.sleep(0.25)

        # Bob decodes alice's camera and microphone, named with her Matrix user and device.
        for kind in ("video", "audio"):
            remote = await bob_client.wait_for_track(alice.user_id, kind, timeout=30)
            assert remote.device_id == alice.device_id
            readers.append(asyncio.create_task(_count_frames(remote.track, received[kind])))
        deadline = time.monotonic() + MEDIA_TIMEOUT
        while received["video"].frames < 10 or received["audio"].frames < 50:
            counts = {kind: r.frames for kind, r in received.items()}
            assert time.monotonic() < deadline, f"bob decoded only {counts} frames from alice"
            await asyncio.sleep(0.2)
        transports = {p.identity.user_id: p.transport for p in service.hub.participants(call_room.room_id)}
        assert transports == {alice.user_id: "livekit", bob.user_id: "todevice"}
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await bob_client.leave()
