"""Headless Chromium + unmodified livekit-client for the browser tests (marker `browser`).

Fixtures and helpers; conftest.py imports the fixtures (a uniquely named module, like
tests/integration/synapse_fixtures.py, so that test modules can import the helpers).

The browser is Debian's `/usr/bin/chromium` (never a downloaded one) driven by Playwright's async API.
`harness_routes()` serves `page.html`, `harness.js` and the npm package's UMD build + E2EE worker
under `/harness/`; tests mount them next to the endpoints under test (same origin) or use the
`harness_url` fixture, a bare aiohttp server on 127.0.0.1. `open_page()` opens the page in a fresh
browser context (one per participant) and returns a `HarnessPage` wrapping `window.harness`.

Missing parts (Chromium, Playwright, `npm ci` not run) skip the tests locally and FAIL them when
`CI=true`: the browser tests must run in CI (`scripts/test` installs what they need).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

HERE = Path(__file__).resolve().parent
LIVEKIT_DIST = HERE / "node_modules" / "livekit-client" / "dist"
#: Files of the npm package the page may load (nothing else under node_modules is served).
LIVEKIT_FILES = ("livekit-client.umd.js", "livekit-client.e2ee.worker.js")
CHROMIUM = os.environ.get("VISIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Real host candidates instead of mDNS names: the relay and the other page must reach them.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)
IN_CI = os.environ.get("CI") == "true"


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"browser tests must run in CI: {why}", pytrace=False)
    pytest.skip(why)


def require_browser() -> str:
    """The Chromium executable, after checking every part the browser tests need is installed."""
    if shutil.which(CHROMIUM) is None:
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test does it as root)")
    missing = [name for name in LIVEKIT_FILES if not (LIVEKIT_DIST / name).is_file()]
    if missing:
        _unavailable(f"livekit-client not installed in {HERE} (run `npm ci` there): missing {missing}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright Python package is missing (pip install -e '.[dev]')")
    return CHROMIUM


def require_call_page() -> None:
    """The service's call page (``visio_matrix/web/app``) must be built; ``scripts/test`` builds it."""
    from visio_matrix.web.pages import DEFAULT_STATIC_DIR

    if not (DEFAULT_STATIC_DIR / "index.html").is_file():
        _unavailable("the call page is not built (npm ci && npm run build in visio_matrix/web/app)")


# ---- the page -----------------------------------------------------------------------------------


def harness_routes(prefix: str = "/harness") -> list[web.RouteDef]:
    """Routes serving the test page, its script and the livekit-client files under `prefix`."""
    files = {"page.html": HERE / "page.html", "harness.js": HERE / "harness.js"}
    files.update({f"lib/{name}": LIVEKIT_DIST / name for name in LIVEKIT_FILES})

    async def serve(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    return [web.get(prefix + "/{name:.+}", serve)]


def page_url(base_url: str, prefix: str = "/harness") -> str:
    return base_url.rstrip("/") + prefix + "/page.html"


@pytest_asyncio.fixture
async def harness_url() -> AsyncIterator[str]:
    """Base URL (http://127.0.0.1:PORT) of an aiohttp server serving only the harness routes."""
    require_browser()
    app = web.Application()
    app.add_routes(harness_routes())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


# ---- the browser --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium (playwright `Browser`) with a fresh temporary profile, closed after the test."""
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


class HarnessPage:
    """One participant: a page in its own browser context, with `window.harness` called through evaluate."""

    def __init__(self, context: BrowserContext, page: Page, name: str) -> None:
        self.context = context
        self.page = page
        self.name = name
        self.console: list[str] = []
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    async def call(self, function: str, *args: Any) -> Any:
        """`await window.harness.<function>(...args)` in the page; one JSON argument at most."""
        if len(args) > 1:
            raise ValueError("harness functions take at most one argument")
        if args:
            return await self.page.evaluate(f"(arg) => window.harness.{function}(arg)", args[0])
        return await self.page.evaluate(f"() => window.harness.{function}()")

    async def events(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call("events")
        return result

    async def poll(
        self,
        function: str,
        done: Callable[[Any], bool],
        timeout: float,
        interval: float = 0.25,
    ) -> Any:
        """Call `function` until `done(result)`; on timeout fail with the last result and the page's log."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.call(function)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {function} not done after {timeout}s: {result!r}\n{await self.describe()}"
                )
            await asyncio.sleep(interval)

    async def describe(self) -> str:
        """The page's events and console, for failure messages."""
        try:
            events = await self.events()
        except Exception as exc:  # the page may be gone; the console may still say why
            events = [{"kind": "events-unavailable", "error": repr(exc)}]
        lines = [f"--- {self.name} events"] + [repr(e) for e in events[-60:]]
        lines += [f"--- {self.name} console", *self.console[-60:]]
        return "\n".join(lines)

    async def close(self) -> None:
        await self.context.close()


async def open_page(browser: Browser, url: str, name: str) -> HarnessPage:
    """Open the harness page at `url` in a new context and wait until livekit-client has loaded."""
    context = await browser.new_context(permissions=["camera", "microphone"])
    page = await context.new_page()
    harness = HarnessPage(context, page, name)
    try:
        await page.goto(url)
        await page.wait_for_function("() => window.harness && window.harness.ready", timeout=10_000)
    except BaseException:
        detail = await harness.describe()
        await context.close()
        raise AssertionError(f"{name}: the harness page did not load from {url}\n{detail}") from None
    return harness


OpenPage = Callable[[str, str], Awaitable[HarnessPage]]


@pytest_asyncio.fixture
async def pages(browser: Browser) -> AsyncIterator[OpenPage]:
    """`await pages(url, name)` opens a participant page; all are closed after the test."""
    opened: list[HarnessPage] = []

    async def open_one(url: str, name: str) -> HarnessPage:
        page = await open_page(browser, url, name)
        opened.append(page)
        return page

    yield open_one
    for page in opened:
        try:
            await page.close()
        except Exception:  # the browser may already be closing
            pass
