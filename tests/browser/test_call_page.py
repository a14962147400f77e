"""The call page (visio_matrix/web/app, built into visio_matrix/web/static) in headless Chromium.

Real parts only: Synapse with our appservice, the whole service (token service, LiveKit signaling,
relay), the built page served by `visio_matrix.web.pages.page_routes` and Chromium with fake devices.

- token mode (`/call/?mode=token&url=...&jwt=...`, what the guest lobby hands out): two members get
  call tokens from `/sfu/get` with their real OpenID tokens; each page shows a tile named after the
  other with video playing, the mute button toggles (aria-pressed) and the other side sees the
  mute, leaving shows the ended state.
- widget mode: `widget_host.html` (the widget API's host side, answering over postMessage) embeds the
  page from the widget URL of `visio_matrix.web.widget`; the page asks it for an OpenID token, the
  host answers with a real Synapse OpenID token, the page gets its call token from the token service
  and joins; a non-member's token is refused and the page shows the refused state.

Screenshots go to test-artifacts/ (and to docs/call-page.png with VISIO_UPDATE_DOCS_SCREENSHOT=1).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from browser_harness import CHROMIUM_ARGS, require_browser, require_call_page
from synapse_fixtures import ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.devstack.user import MatrixUser
from visio_matrix.web.pages import DEFAULT_STATIC_DIR, page_routes
from visio_matrix.web.widget import TEMPLATE_PARAMS, widget_url

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Frame, Page

pytestmark = [pytest.mark.browser, pytest.mark.synapse]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
MEDIA_TIMEOUT = 40.0


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    # Same name and options as test_focus_browser.py: one homeserver for both modules.
    return await service_stack(synapse_factory, tmp_path_factory, "visio-focus", advertise_focus=True)


@dataclass
class CallRoom:
    room_id: str
    users: list[MatrixUser]


@pytest_asyncio.fixture
async def call_room(stack: ServiceStack, service: Service) -> AsyncIterator[CallRoom]:
    """An encrypted room with the bot and two joined users, alice and bob."""
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


@pytest_asyncio.fixture
async def site(service: Service) -> AsyncIterator[str]:
    """Base URL of a server with the page routes (app.py does not mount them yet), the widget host,
    and `/sfu/get` passed through to the service's real token service (the page asks `../sfu/get`)."""
    require_browser()
    require_call_page()
    token_url = service.config.focus.public_url.rstrip("/") + "/sfu/get"
    session = aiohttp.ClientSession()

    async def sfu_get(request: web.Request) -> web.Response:
        async with session.post(
            token_url, data=await request.read(), headers={"Content-Type": "application/json"}
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")

    async def host(request: web.Request) -> web.FileResponse:
        return web.FileResponse(HERE / "widget_host.html")

    app = web.Application()
    app.add_routes(page_routes(DEFAULT_STATIC_DIR))
    app.add_routes([web.post("/sfu/get", sfu_get), web.get("/host/widget_host.html", host)])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await session.close()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium with the harness's flags (a larger viewport is set per context)."""
    executable = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Tab:
    context: BrowserContext
    page: Page
    name: str
    console: list[str]

    async def describe(self) -> str:
        lines = [f"--- {self.name} console", *self.console[-60:]]
        return "\n".join(lines)


OpenTab = Callable[[str, str], Awaitable[Tab]]


@pytest_asyncio.fixture
async def tabs(browser: Browser) -> AsyncIterator[OpenTab]:
    opened: list[Tab] = []

    async def open_tab(url: str, name: str) -> Tab:
        context = await browser.new_context(
            permissions=["camera", "microphone"], viewport={"width": 1280, "height": 800}
        )
        page = await context.new_page()
        tab = Tab(context, page, name, [])
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


def legacy_identity(user: MatrixUser) -> str:
    return f"{user.user_id}:{user.device_id}"


async def call_token(service: Service, user: MatrixUser, room_id: str) -> dict[str, Any]:
    body = {"room": room_id, "openid_token": await user.get_openid_token(), "device_id": user.device_id}
    url = service.config.focus.public_url.rstrip("/") + "/sfu/get"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
        return answer


def tile_playing(identity: str) -> Callable[[Any], bool]:
    def done(snap: Any) -> bool:
        return any(
            t["identity"] == identity
            and t["hasVideo"]
            and (t["framesShown"] or 0) > 5
            and t["currentTime"] > 0
            for t in snap["tiles"]
        )

    return done


def participant(snap: Any, identity: str) -> dict[str, Any] | None:
    return next((p for p in snap["participants"] if p["identity"] == identity), None)


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


async def test_token_mode_two_pages_see_each_other_mute_and_leave(
    site: str, tabs: OpenTab, service: Service, call_room: CallRoom
) -> None:
    alice, bob = call_room.users
    pages: list[Tab] = []
    for user in (alice, bob):
        token = await call_token(service, user, call_room.room_id)
        query = urlencode({"mode": "token", "url": token["url"], "jwt": token["jwt"]})
        pages.append(await tabs(f"{site}/call/?{query}", user.user_id))
    alice_tab, bob_tab = pages

    for tab, me, other in ((alice_tab, alice, bob), (bob_tab, bob, alice)):
        snap = await wait_snapshot(
            tab.page,
            tile_playing(legacy_identity(other)),
            MEDIA_TIMEOUT,
            f"{me.user_id} showing {other.user_id}",
        )
        assert snap["state"] == "connected"
        assert snap["identity"] == legacy_identity(me)
        # The tile is named after the other participant (Matrix user id: these tokens carry no name).
        tile = tab.page.locator(f'.tile[data-identity="{legacy_identity(other)}"]')
        assert await tile.locator(".name").inner_text() == other.user_id
        assert await tab.page.locator("body").get_attribute("data-state") == "connected"
        items = await tab.page.locator("#people-list li").all_inner_texts()
        assert len(items) == 2 and any(other.user_id in i for i in items) and any("(you)" in i for i in items)
        assert await tab.page.locator("#people-count").inner_text() == "2"
    # The token stays out of the address bar.
    assert "jwt" not in alice_tab.page.url

    # Mute: alice's button is pressed, bob sees alice muted (tile and participant list).
    mic = alice_tab.page.get_by_role("button", name="Mute microphone")
    assert await mic.get_attribute("aria-pressed") == "false"
    await mic.focus()
    await alice_tab.page.keyboard.press("Enter")  # keyboard, not a mouse click
    unmute = alice_tab.page.get_by_role("button", name="Unmute microphone")
    await unmute.wait_for(timeout=5000)
    assert await unmute.get_attribute("aria-pressed") == "true"
    alice_id = legacy_identity(alice)
    await wait_snapshot(
        bob_tab.page,
        lambda s: (participant(s, alice_id) or {}).get("micMuted") is True,
        15,
        "bob seeing alice muted",
    )
    alice_tile = bob_tab.page.locator(f'.tile[data-identity="{alice_id}"]')
    assert await alice_tile.get_attribute("data-mic-muted") == "true"
    assert await alice_tile.get_by_role("img", name="microphone muted").count() == 1
    await bob_tab.page.screenshot(path=str(screenshot_path("call-page-token-muted.png")))
    await unmute.click()
    await wait_snapshot(
        bob_tab.page, lambda s: (participant(s, alice_id) or {}).get("micMuted") is False, 15, "alice unmuted"
    )
    # Camera off and on: bob's tile for alice loses and regains her video.
    camera = alice_tab.page.get_by_role("button", name="Turn camera off")
    await camera.click()
    await alice_tab.page.get_by_role("button", name="Turn camera on").wait_for(timeout=5000)
    assert await alice_tab.page.locator("#camera").get_attribute("aria-pressed") == "true"
    await wait_snapshot(
        bob_tab.page,
        lambda s: (participant(s, alice_id) or {}).get("cameraOn") is False,
        15,
        "alice's camera off",
    )
    await alice_tab.page.get_by_role("button", name="Turn camera on").click()
    await wait_snapshot(
        bob_tab.page,
        lambda s: (participant(s, alice_id) or {}).get("cameraOn") is True,
        15,
        "alice's camera on",
    )

    # Screen share: bob gets a second tile for alice's screen, with frames.
    await alice_tab.page.get_by_role("button", name="Share screen").click()
    await alice_tab.page.get_by_role("button", name="Stop sharing screen").wait_for(timeout=10_000)
    screen_key = alice_id + ":screen"
    await wait_snapshot(
        bob_tab.page,
        lambda s: any(t["key"] == screen_key and (t["framesShown"] or 0) > 2 for t in s["tiles"]),
        MEDIA_TIMEOUT,
        "alice's screen on bob's page",
    )
    await bob_tab.page.screenshot(path=str(screenshot_path("call-page-screen-share.png")))
    await alice_tab.page.get_by_role("button", name="Stop sharing screen").click()
    await wait_snapshot(
        bob_tab.page, lambda s: all(t["key"] != screen_key for t in s["tiles"]), 15, "the screen tile gone"
    )

    # A short pause so that the screenshot shows live frames, then the README picture.
    await wait_snapshot(bob_tab.page, tile_playing(alice_id), 10, "alice's video still playing")
    await bob_tab.page.screenshot(path=str(screenshot_path("call-page-token.png")))
    if os.environ.get("VISIO_UPDATE_DOCS_SCREENSHOT"):  # refresh docs/call-page.png on request only
        await bob_tab.page.screenshot(path=str(ROOT / "docs" / "call-page.png"))

    # Leave: alice's page shows the ended state; bob's grid drops her tile.
    await alice_tab.page.get_by_role("button", name="Leave call").click()
    await wait_snapshot(alice_tab.page, lambda s: s["state"] == "ended", 15, "alice's ended state")
    assert await alice_tab.page.locator("#notice").is_visible()
    assert "You left the call." in await alice_tab.page.locator("#notice-text").inner_text()
    assert await alice_tab.page.get_by_role("button", name="Leave call").is_disabled()
    await alice_tab.page.screenshot(path=str(screenshot_path("call-page-ended.png")))
    await wait_snapshot(
        bob_tab.page, lambda s: participant(s, alice_id) is None, 20, "bob seeing alice leave"
    )
    assert await bob_tab.page.locator(f'.tile[data-identity="{alice_id}"]').count() == 0


def substituted_widget_url(site: str, room_id: str, user: MatrixUser, display_name: str) -> str:
    """What a Matrix client does with the widget URL template: substitute the variables."""
    values = {
        "$matrix_room_id": room_id,
        "$matrix_user_id": user.user_id,
        "$matrix_display_name": display_name,
        "$org.matrix.msc3819.matrix_device_id": user.device_id,
        "$org.matrix.msc2873.client_language": "en",
        "$matrix_widget_id": "visio-call",
    }
    url = widget_url(site, room_id)
    for _key, variable in TEMPLATE_PARAMS:
        url = url.replace(variable + "&", quote(values.get(variable, ""), safe="") + "&", 1)
        if url.endswith(variable):
            url = url[: -len(variable)] + quote(values.get(variable, ""), safe="")
    assert "$" not in url, url
    return url


async def open_widget(
    site: str, tabs: OpenTab, room_id: str, user: MatrixUser, openid: dict[str, Any], name: str
) -> tuple[Tab, Frame]:
    tab = await tabs(f"{site}/host/widget_host.html", name)
    await tab.page.evaluate(
        "(o) => window.host.open(o)",
        {
            "url": substituted_widget_url(site, room_id, user, name),
            "widgetId": "visio-call",
            "openid": openid,
        },
    )
    frame_element = await tab.page.wait_for_selector("iframe")
    frame = await frame_element.content_frame()
    assert frame is not None
    await frame.wait_for_function("() => !!window.visioDebug", timeout=10_000)
    return tab, frame


async def test_widget_mode_member_joins_with_openid_from_the_host(
    site: str, tabs: OpenTab, service: Service, call_room: CallRoom
) -> None:
    alice = call_room.users[0]
    tab, frame = await open_widget(
        site, tabs, call_room.room_id, alice, await alice.get_openid_token(), "Alice Widget"
    )
    snap = await wait_snapshot(frame, lambda s: s["state"] == "connected", 30, "the widget joining")
    assert snap["identity"] == legacy_identity(alice)
    # The host was asked for the OpenID token, after the capability exchange.
    seen = await tab.page.evaluate("() => window.host.seen")
    actions = [(m["dir"], m["action"]) for m in seen]
    assert ("in", "get_openid") in actions and ("out", "capabilities") in actions, seen
    assert all(m.get("widgetId") in (None, "visio-call") for m in seen)
    # Alice is in the call on the relay, with her device, and the page publishes her camera.
    in_hub = {(p.identity.user_id, p.identity.device_id) for p in service.hub.participants(call_room.room_id)}
    assert in_hub == {(alice.user_id, alice.device_id)}
    await wait_snapshot(frame, tile_playing(legacy_identity(alice)), MEDIA_TIMEOUT, "alice's own camera")
    # Her display name from the widget URL ($matrix_display_name) is set on her participant.
    await wait_snapshot(
        frame,
        lambda s: (participant(s, legacy_identity(alice)) or {}).get("name") == "Alice Widget",
        15,
        "the display name",
    )
    assert await frame.locator(".tile.local .name").inner_text() == "Alice Widget (you)"
    await tab.page.screenshot(path=str(screenshot_path("call-page-widget.png")))


async def test_widget_mode_non_member_is_refused(
    site: str, tabs: OpenTab, stack: ServiceStack, service: Service, call_room: CallRoom
) -> None:
    carol = await stack.new_user("carol")
    try:
        tab, frame = await open_widget(
            site, tabs, call_room.room_id, carol, await carol.get_openid_token(), "Carol Outsider"
        )
        snap = await wait_snapshot(frame, lambda s: s["state"] == "refused", 30, "the refused state")
        assert "not a member" in snap["message"], snap
        assert await frame.locator("body").get_attribute("data-state") == "refused"
        assert await frame.locator("#notice").is_visible()
        assert "not a member" in await frame.locator("#notice-text").inner_text()
        assert await frame.get_by_role("alert").count() == 1
        for label in ("Mute microphone", "Turn camera off", "Share screen", "Leave call"):
            assert await frame.get_by_role("button", name=label).is_disabled(), label
        assert service.hub.participants(call_room.room_id) == ()
        await tab.page.screenshot(path=str(screenshot_path("call-page-refused.png")))
    finally:
        await carol.close()


async def test_token_mode_forged_token_is_refused(site: str, tabs: OpenTab, service: Service) -> None:
    query = urlencode({"mode": "token", "url": service.config.focus.livekit_url, "jwt": "a.b.c"})
    tab = await tabs(f"{site}/call/?{query}", "mallory")
    snap = await wait_snapshot(tab.page, lambda s: s["state"] in ("refused", "error"), 30, "a refusal")
    assert snap["state"] == "refused", snap
    assert "invalid authorization token" in snap["message"]
