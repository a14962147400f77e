"""One call with a widget member, an admitted guest (both in headless Chromium) and a Python participant.

Real parts only, everything served by the service's own listener (``/call/``, ``/guest/...``,
``/sfu/get``, ``/rtc/v1``): Synapse with our appservice, an encrypted room with the bot.

- A member types ``!visio start``. Member A opens the call page in widget mode inside
  ``widget_host.html`` (the widget API's host side) with a real Synapse OpenID token.
- A member types ``!visio link``; the link is taken from the decrypted reply; a guest opens it in the
  lobby page, types a name and waits; the bot says "<name> is waiting"; a member types
  ``!visio admit <name>``; the lobby page goes to the call page and joins.
- Member B joins with the Python reference client (Matrix-native signaling), colour and tone tracks.

Each browser shows video frames from both other participants; B receives audio and video frames from
both browsers. A denied guest sees the denied state and never reaches the relay; forged and expired
links get a 4xx page that says why. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from browser_harness import CHROMIUM_ARGS, require_browser, require_call_page
from synapse_fixtures import PASSWORD, ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.calls.hub_api import GUEST_USER_PREFIX
from visio_matrix.client.matrix import login_client
from visio_matrix.client.media import ColorVideoTrack, MediaProbe, Received, ToneAudioTrack
from visio_matrix.client.session import ConferenceClient
from visio_matrix.devstack.call_check import loopback_pc
from visio_matrix.devstack.user import MatrixUser, MessageView
from visio_matrix.web.guest_api import public_guest_id
from visio_matrix.web.guest_links import link_url, load_private_key, new_link, sign_link
from visio_matrix.web.widget import TEMPLATE_PARAMS, widget_url

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Frame, Page

pytestmark = [pytest.mark.browser, pytest.mark.synapse, pytest.mark.media]

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent.parent / "test-artifacts"
MEDIA_TIMEOUT = 45.0
LINK = re.compile(r"https?://\S+/guest/[A-Za-z0-9_.-]+")
BOB_COLOUR, BOB_TONE = (40, 200, 60), 440.0


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    # Same name and options as test_call_page.py / test_focus_browser.py: one homeserver for all three.
    return await service_stack(synapse_factory, tmp_path_factory, "visio-focus", advertise_focus=True)


@pytest_asyncio.fixture
async def base(service: Service) -> str:
    """The service's public base URL (the appservice listener), after checking that the page is built."""
    require_browser()
    require_call_page()
    assert service.config.guests.enabled, "generate-config writes a guest link signing key"
    return service.config.focus.public_url.rstrip("/")


@pytest_asyncio.fixture
async def host_site() -> AsyncIterator[str]:
    """The widget host page, on its own origin (as a Matrix client would be)."""

    async def host(request: web.Request) -> web.FileResponse:
        return web.FileResponse(HERE / "widget_host.html")

    app = web.Application()
    app.add_routes([web.get("/host/widget_host.html", host)])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@dataclass
class Tab:
    context: BrowserContext
    page: Page
    console: list[str]


@pytest_asyncio.fixture
async def chromium() -> AsyncIterator[Browser]:
    executable = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture
async def tabs(chromium: Browser) -> AsyncIterator[Callable[[str], Any]]:
    opened: list[Tab] = []

    async def open_tab(url: str) -> Tab:
        context = await chromium.new_context(
            permissions=["camera", "microphone"], viewport={"width": 1280, "height": 800}
        )
        page = await context.new_page()
        tab = Tab(context, page, [])
        page.on("console", lambda msg: tab.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: tab.console.append(f"pageerror: {exc}"))
        opened.append(tab)
        await page.goto(url)
        return tab

    yield open_tab
    for tab in opened:
        try:
            await tab.context.close()
        except Exception:
            pass


@dataclass
class Room:
    room_id: str
    alice: MatrixUser
    bob: MatrixUser


@pytest_asyncio.fixture
async def room(stack: ServiceStack, service: Service) -> AsyncIterator[Room]:
    """An encrypted room with the bot, alice and bob, where alice has typed ``!visio start``."""
    alice, bob = await stack.new_user("alice"), await stack.new_user("bob")
    bot = service.bot_user_id
    try:
        room_id = await alice.create_room("guests and widgets", invite=[bot, bob.user_id], encrypted=True)
        await bob.join(room_id)
        await alice.wait_for_membership(room_id, bot, "join", timeout=30)
        await alice.wait_for_membership(room_id, bob.user_id, "join", timeout=30)
        await alice.wait_for_message(room_id, said(bot, "Hello!"), timeout=30)
        await alice.send_text(room_id, "!visio start")
        await alice.wait_for_message(room_id, said(bot, "📞 Call started"), timeout=30)
        yield Room(room_id, alice, bob)
    finally:
        await alice.close()
        await bob.close()


def said(bot: str, prefix: str) -> Callable[[MessageView], bool]:
    return lambda m: m.sender == bot and (m.body or "").startswith(prefix)


def shot(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


async def guest_link(room: Room, bot: str) -> str:
    await room.alice.send_text(room.room_id, "!visio link")
    reply = await room.alice.wait_for_message(room.room_id, said(bot, "Guest link for this room"), timeout=30)
    match = LINK.search(reply.body or "")
    assert match is not None, reply.body
    return match.group(0)


async def snapshot(where: Page | Frame) -> Any:
    return await where.evaluate("() => window.visioDebug ? window.visioDebug.snapshot() : null")


async def wait_snapshot(where: Page | Frame, done: Callable[[Any], bool], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await snapshot(where)
        if got is not None and done(got):
            return got
        if time.monotonic() > deadline:
            events = await where.evaluate("() => window.visioDebug ? window.visioDebug.events() : null")
            raise AssertionError(f"{what} not seen after {timeout}s: {got!r}\nevents: {events!r}")
        await asyncio.sleep(0.25)


def playing(snap: Any, is_them: Callable[[str], bool]) -> bool:
    """A tile of that participant (camera, not screen) shows decoded video frames."""
    return any(
        is_them(t["identity"] or "")
        and not t["key"].endswith(":screen")
        and t["hasVideo"]
        and (t["framesShown"] or 0) > 5
        and t["currentTime"] > 0
        for t in snap["tiles"]
    )


def substituted_widget_url(base: str, room_id: str, user: MatrixUser, display_name: str) -> str:
    """What a Matrix client does with the widget URL template: substitute the variables."""
    values = {
        "$matrix_room_id": room_id,
        "$matrix_user_id": user.user_id,
        "$matrix_display_name": display_name,
        "$org.matrix.msc3819.matrix_device_id": user.device_id,
        "$org.matrix.msc2873.client_language": "en",
        "$matrix_widget_id": "visio-call",
    }
    from urllib.parse import quote

    url = widget_url(base, room_id)
    for _key, variable in TEMPLATE_PARAMS:
        url = url.replace(variable + "&", quote(values.get(variable, ""), safe="") + "&", 1)
        if url.endswith(variable):
            url = url[: -len(variable)] + quote(values.get(variable, ""), safe="")
    assert "$" not in url, url
    return url


async def track_of(call: ConferenceClient, who: str, kind: str) -> Any:
    """A member's track by Matrix user; a guest's (no Matrix user ID) by the public id the bot sends as
    its device id in ``sdp_stream_metadata``."""
    if not who.startswith(GUEST_USER_PREFIX):
        return await call.wait_for_track(who, kind, MEDIA_TIMEOUT)
    device = who[len(GUEST_USER_PREFIX) :]
    deadline = time.monotonic() + MEDIA_TIMEOUT
    while time.monotonic() < deadline:
        found = next((t for t in call.remote if t.kind == kind and t.device_id == device), None)
        if found is not None:
            assert found.user_id is None  # not passed off as a Matrix user
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {kind} track from guest {device}")


async def received_frames(
    call: ConferenceClient, probe: MediaProbe, user_id: str
) -> tuple[Received, Received]:
    video = probe.watch((await track_of(call, user_id, "video")).track)
    audio = probe.watch((await track_of(call, user_id, "audio")).track)
    await asyncio.wait_for(asyncio.gather(video.got_frame.wait(), audio.got_frame.wait()), MEDIA_TIMEOUT)
    return video, audio


async def test_widget_member_admitted_guest_and_python_member_in_one_call(
    base: str, host_site: str, tabs: Any, stack: ServiceStack, service: Service, room: Room
) -> None:
    bot, room_id, alice, bob = service.bot_user_id, room.room_id, room.alice, room.bob

    # (1) Alice as a room widget, with a real OpenID token handed over by the host page.
    widget_tab: Tab = await tabs(f"{host_site}/host/widget_host.html")
    await widget_tab.page.evaluate(
        "(o) => window.host.open(o)",
        {
            "url": substituted_widget_url(base, room_id, alice, "Alice Widget"),
            "widgetId": "visio-call",
            "openid": await alice.get_openid_token(),
        },
    )
    frame = await (await widget_tab.page.wait_for_selector("iframe")).content_frame()
    assert frame is not None
    await frame.wait_for_function("() => !!window.visioDebug", timeout=10_000)
    await wait_snapshot(frame, lambda s: s["state"] == "connected", 30, "the widget joining")

    # (2) A guest: the link from the room, the real lobby page, a name, then admitted from the room.
    link = await guest_link(room, bot)
    guest_tab: Tab = await tabs(link)
    assert await guest_tab.page.title() == "Join the call"
    await guest_tab.page.get_by_label("Your name").fill("Ann")
    async with guest_tab.page.expect_response("**/guest/api/arrive") as arrived:
        await guest_tab.page.get_by_role("button", name="Ask to join").click()
    ann_id = f"{GUEST_USER_PREFIX}{public_guest_id((await (await arrived.value).json())['guest_id'])}"
    status = guest_tab.page.get_by_role("status")
    await guest_tab.page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('Waiting for someone')",
        timeout=10_000,
    )
    assert "Waiting for someone in the room to let you in" in await status.inner_text()
    await guest_tab.page.screenshot(path=shot("guest-lobby-waiting.png"))
    await alice.wait_for_message(room_id, said(bot, "Ann is waiting (type !visio admit Ann"), timeout=30)
    await alice.send_text(room_id, "!visio admit Ann")
    await guest_tab.page.wait_for_url(re.compile(r"/call/\?"), timeout=30_000)
    await guest_tab.page.wait_for_function("() => !!window.visioDebug", timeout=10_000)
    guest_snap = await wait_snapshot(
        guest_tab.page, lambda s: s["state"] == "connected", 30, "the guest joining"
    )
    assert guest_snap["identity"] == ann_id
    assert "jwt" not in guest_tab.page.url

    # (3) Bob with the Python reference client, on a new device, colour and tone.
    matrix = await login_client(
        stack.hs.base_url, bob.user_id, PASSWORD, stack.workdir / "refclient" / str(time.time_ns()), "ref"
    )
    video, audio = ColorVideoTrack(BOB_COLOUR), ToneAudioTrack(BOB_TONE)
    call = ConferenceClient(
        matrix.client,
        room_id,
        bot,
        channel=matrix.to_device,
        peer_connection_factory=loopback_pc,
        join_timeout=20.0,
    )
    probe = MediaProbe()
    try:
        await call.join([audio, video])
        in_hub = {p.identity.user_id for p in service.hub.participants(room_id)}
        assert in_hub == {alice.user_id, ann_id, bob.user_id}, in_hub

        # Each browser shows decoded video from each of the two others.
        def is_alice(i: str) -> bool:
            return i.startswith(alice.user_id) and i != ""

        def is_bob(i: str) -> bool:
            return i.startswith(bob.user_id)

        def is_ann(i: str) -> bool:
            return i == ann_id

        for where, name, others in (
            (frame, "alice's widget", (is_ann, is_bob)),
            (guest_tab.page, "ann's page", (is_alice, is_bob)),
        ):
            snap = await wait_snapshot(
                where,
                lambda s, o=others: all(playing(s, f) for f in o),
                MEDIA_TIMEOUT,
                f"{name} showing both others",
            )
            assert len(snap["participants"]) == 3, snap["participants"]
        names = {p["name"] for p in (await snapshot(frame))["participants"]}
        assert "Ann" in names, names
        await guest_tab.page.screenshot(path=shot("guest-call-three-party.png"))
        await widget_tab.page.screenshot(path=shot("widget-call-three-party.png"))
        # Bob receives both browsers' audio and video (decoded frames).
        a_video, a_audio = await received_frames(call, probe, alice.user_id)
        g_video, g_audio = await received_frames(call, probe, ann_id)
        await asyncio.sleep(1.0)
        for what, rec in (
            ("alice video", a_video),
            ("alice audio", a_audio),
            ("ann video", g_video),
            ("ann audio", g_audio),
        ):
            assert rec.frames > 3, (what, rec.frames)
    finally:
        try:
            await call.leave()
        finally:
            await probe.close()
            video.stop()
            audio.stop()
            await matrix.close()


async def test_denied_guest_and_forged_or_expired_links_are_refused(
    base: str, tabs: Any, service: Service, room: Room
) -> None:
    bot, room_id, alice = service.bot_user_id, room.room_id, room.alice
    link = await guest_link(room, bot)

    gus: Tab = await tabs(link)
    await gus.page.get_by_label("Your name").fill("Gus")
    async with gus.page.expect_response("**/guest/api/arrive") as arrived:
        await gus.page.get_by_role("button", name="Ask to join").click()
    gus_id = f"{GUEST_USER_PREFIX}{public_guest_id((await (await arrived.value).json())['guest_id'])}"
    await alice.wait_for_message(room_id, said(bot, "Gus is waiting"), timeout=30)
    await alice.send_text(room_id, "!visio deny Gus")
    await alice.wait_for_message(room_id, said(bot, "Gus was turned away"), timeout=30)
    await gus.page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('not let in')", timeout=15_000
    )
    status = gus.page.get_by_role("status")
    assert await status.inner_text() == "Sorry, you were not let in to this call."
    assert await status.get_attribute("class") == "error"
    await gus.page.screenshot(path=shot("guest-lobby-denied.png"))
    await asyncio.sleep(3)  # the lobby page would have moved on by now (it polls every 2 s)
    assert "/guest/" in gus.page.url
    assert gus_id not in {p.identity.user_id for p in service.hub.participants(room_id)}

    # Forged (signature altered) and expired (signed with the service's key, past its expiry) links.
    token = link.rsplit("/", 1)[1]
    payload, signature = token.rsplit(".", 1)
    forged = f"{base}/guest/{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    key = load_private_key(service.config.guests.signing_key)
    lifetime = service.config.guests.link_lifetime
    expired = link_url(base, sign_link(new_link(room_id, time.time() - 2 * lifetime, lifetime), key))
    async with aiohttp.ClientSession() as http:
        for url, code, text in (
            (forged, 403, "This guest link was not issued by this service, or it was altered."),
            (expired, 410, "This guest link has expired. Ask the people in the room for a new one."),
            (f"{base}/guest/not-a-link", 400, "This guest link is not valid."),
        ):
            async with http.get(url) as resp:
                body = await resp.text()
                assert resp.status == code, (url, resp.status, body)
                assert text in body, body
    page: Tab = await tabs(expired)
    assert await page.page.title() == "Guest link refused"
    assert "has expired" in await page.page.get_by_role("alert").inner_text()
    assert await page.page.locator("#name").count() == 0
    await page.page.screenshot(path=shot("guest-link-expired.png"))
