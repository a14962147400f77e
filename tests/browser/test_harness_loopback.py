"""The browser harness itself: Chromium starts, the page loads livekit-client, fake media decodes.

Two pages in one headless Chromium run a plain RTCPeerConnection between them (no server: the
test carries the SDP, candidates included, through `page.evaluate`). The answering page must decode
the offering page's fake-camera frames and receive its fake-microphone audio. When this fails, the
browser set-up is broken, not the focus.
"""

from __future__ import annotations

import time

import pytest
from aiohttp import ClientSession
from browser_harness import LIVEKIT_FILES, OpenPage, page_url

pytestmark = pytest.mark.browser


async def test_page_serves_only_harness_files(harness_url: str) -> None:
    async with ClientSession() as http:
        for name in ("page.html", "harness.js", *(f"lib/{f}" for f in LIVEKIT_FILES)):
            async with http.get(f"{harness_url}/harness/{name}") as resp:
                assert resp.status == 200, name
        for name in ("conftest.py", "lib/../package.json", "lib/livekit-client.esm.mjs"):
            async with http.get(f"{harness_url}/harness/{name}") as resp:
                assert resp.status == 404, name


async def test_loopback_decodes_fake_camera(harness_url: str, pages: OpenPage) -> None:
    started = time.monotonic()
    sender = await pages(page_url(harness_url), "sender")
    receiver = await pages(page_url(harness_url), "receiver")
    assert await sender.page.evaluate("() => window.harness.livekitVersion") == "2.23.0"

    offer = await sender.call("loopbackOffer")
    assert "m=video" in offer and "m=audio" in offer
    answer = await receiver.call("loopbackAnswer", offer)
    await sender.call("loopbackAccept", answer)

    stats = await receiver.poll(
        "loopbackStats",
        lambda s: s["video"]["framesDecoded"] > 10 and s["audio"]["packetsReceived"] > 10,
        timeout=20,
    )
    assert stats["state"] == "connected"
    assert stats["video"]["bytesReceived"] > 0 and stats["audio"]["bytesReceived"] > 0
    # The sender receives nothing: the counters measure what was sent to the receiver, not an echo.
    back = await sender.call("loopbackStats")
    assert back["video"]["framesDecoded"] == 0
    print(f"loopback: pages + first decoded frames in {time.monotonic() - started:.1f}s")
