"""Real livekit-client (headless Chromium) in a room with a federation link: it sees each far-side user
as its own participant, named by Matrix identity, decodes each one's colour from the right tile, sees
the one who speaks as the active speaker, and sees them go when the link leaves."""

from __future__ import annotations

from typing import Any

import pytest
from browser_harness import OpenPage, page_url
from test_livekit_link_owners import U1, U2, FarRelay, World, token, world  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.media]
RED, BLUE = (230, 20, 20), (20, 20, 230)


async def test_browser_sees_far_side_users(world: World, harness_url: str, pages: OpenPage) -> None:  # noqa: F811
    page = await pages(page_url(harness_url), "alice")
    ws_url = world.url.replace("http://", "ws://")
    result = await page.call("lkConnect", {"url": ws_url, "token": token("@alice:a.test", "ALICE")})
    assert result["ok"], (result, await page.describe())
    # u1 plays a tone, u2 silence (a 0 Hz "tone").
    far = FarRelay(world.hub, [("u1-stream", RED, 440.0), ("u2-stream", BLUE, 0.0)])
    try:
        await far.join({"u1-stream": U1, "u2-stream": U2})
        ids = ["@u1:b.test:U1DEV", "@u2:b.test:U2DEV"]

        def done(stats: dict[str, Any]) -> bool:
            return all(
                (stats["remote"].get(i) or {}).get("video", {}).get("framesDecoded", 0) > 10 for i in ids
            )

        stats = await page.poll("lkStats", done, timeout=30)
        assert set(stats["participants"]) == set(ids)
        for i, rgb in zip(ids, (RED, BLUE), strict=True):
            colour = await page.call("lkVideoColor", i)
            assert colour and all(abs(a - b) < 40 for a, b in zip(colour, rgb, strict=True)), (i, colour)
            assert stats["remote"][i]["audio"]["packetsReceived"] > 0
        # The link's audio counts per far-side user: u1 is the speaker, never u2 (nor the link).
        stats = await page.poll("lkStats", lambda s: bool(s["activeSpeakers"]), timeout=15)
        assert stats["activeSpeakers"] == ["@u1:b.test:U1DEV"], stats["activeSpeakers"]
        await world.hub.leave(far.participant_id)
        await page.poll("lkStats", lambda s: not s["participants"], timeout=10)
    finally:
        await far.close()
