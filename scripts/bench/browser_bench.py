"""Browser benchmark: Element-Call-style join time and relay CPU per packet with browser publishers.

Runs a real Synapse, the real service (in this process: bot, hub, relay, token service, LiveKit
signaling) and headless Chromium pages running the unmodified livekit-client 2.23 (the harness of
tests/browser: Debian's /usr/bin/chromium, `npm ci` in tests/browser first; `scripts/bench-browser`
does both).

1. Join time, N runs: a first participant is in the call, publishing; a second page then asks the
   token service for a LiveKit token (`POST /sfu/get` with its Matrix OpenID token, from the page,
   like Element Call), connects to `/rtc/v1`, publishes camera + microphone; the figure is the time
   from the token request to the first frame of the first participant's video presented in the
   page (`requestVideoFrameCallback`), with its parts (token, connect + publish). Median over runs.
2. Relay CPU: K browser participants publish (fake camera + microphone) and receive each other;
   over a window this process's CPU time (`time.process_time`: every thread; Synapse and Chromium
   are other processes) is divided by the RTP packets the relay sent (conference stats
   `packets_out`). Prints microseconds per forwarded packet. The figure is an upper bound for the
   relay: it also holds the rest of the service (bot sync, signaling pings) and the test users'
   idle sync loops and Playwright client, which run in this process too.

Prints a summary and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from visio_matrix.app import Service
from visio_matrix.config import load_config
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port
from visio_matrix.devstack.user import MatrixUser

BROWSER_TESTS = Path(__file__).resolve().parents[2] / "tests" / "browser"
sys.path.insert(0, str(BROWSER_TESTS))

from browser_harness import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    LIVEKIT_DIST,
    LIVEKIT_FILES,
    HarnessPage,
    harness_routes,
    open_page,
    page_url,
)

PASSWORD = "bench password"


def check_prerequisites() -> None:
    missing = [name for name in LIVEKIT_FILES if not (LIVEKIT_DIST / name).is_file()]
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        raise SystemExit(f"livekit-client is not installed: run `npm ci` in {BROWSER_TESTS}")


async def harness_server() -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(harness_routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def join(page: HarnessPage, service: Service, user: MatrixUser, room_id: str) -> dict[str, Any]:
    body = {"room": room_id, "openid_token": await user.get_openid_token(), "device_id": user.device_id}
    tokens_url = service.config.focus.public_url.rstrip("/") + "/sfu/get"
    result: dict[str, Any] = await page.call("lkJoin", {"tokenUrl": tokens_url, "body": body})
    if not result["ok"]:
        raise RuntimeError(f"{page.name} could not join: {result}\n{await page.describe()}")
    return result


def identity(user: MatrixUser) -> str:
    return f"{user.user_id}:{user.device_id}"


async def wait_until_empty(service: Service, room_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while service.hub.participants(room_id):
        if time.monotonic() > deadline:
            raise RuntimeError(f"participants still in the call after {timeout}s")
        await asyncio.sleep(0.1)


async def measure_joins(
    browser: Any, base: str, service: Service, users: list[MatrixUser], room_id: str, runs: int
) -> list[dict[str, float]]:
    first, second = users[0], users[1]
    results = []
    for run in range(runs):
        host = await open_page(browser, page_url(base), f"host{run}")
        guest = await open_page(browser, page_url(base), f"guest{run}")
        try:
            await join(host, service, first, room_id)
            joined = await join(guest, service, second, room_id)
            stats = await guest.poll(
                "lkStats",
                lambda s: (s["remote"].get(identity(first)) or {}).get("firstFrameAt") is not None,
                timeout=60,
                interval=0.05,
            )
            frame_at = stats["remote"][identity(first)]["firstFrameAt"]
            row = {
                "token_ms": joined["tokenAt"] - joined["requestedAt"],
                "connect_publish_ms": joined["joinedAt"] - joined["tokenAt"],
                "first_frame_ms": frame_at - joined["requestedAt"],
            }
            results.append(row)
            print(
                f"  run {run + 1}/{runs}: first frame {row['first_frame_ms']:.0f} ms after the token request"
                f" (token {row['token_ms']:.0f} ms, connect + publish {row['connect_publish_ms']:.0f} ms)"
            )
        finally:
            await guest.close()
            await host.close()
        await wait_until_empty(service, room_id)
    return results


def decoding_all(identities: set[str]) -> Callable[[dict[str, Any]], bool]:
    """Poll predicate: video frames decoded from every one of `identities`."""

    def done(stats: dict[str, Any]) -> bool:
        remote = stats["remote"]
        return all((remote.get(i) or {}).get("video", {}).get("framesDecoded", 0) > 0 for i in identities)

    return done


async def measure_cpu(
    browser: Any, base: str, service: Service, users: list[MatrixUser], room_id: str, seconds: float
) -> dict[str, float]:
    # Baseline in the same run: this process's CPU with nobody in the call (the service, Synapse
    # clients' sync loops, the page server): subtracted to get what the media costs.
    idle0, idle_wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    idle_rate = (time.process_time() - idle0) / (time.monotonic() - idle_wall0)
    pages = [await open_page(browser, page_url(base), f"publisher{i}") for i in range(len(users))]
    try:
        for page, user in zip(pages, users, strict=True):
            await join(page, service, user, room_id)
        others = {identity(u) for u in users}
        for page, user in zip(pages, users, strict=True):
            await page.poll("lkStats", decoding_all(others - {identity(user)}), timeout=60)
        await asyncio.sleep(3)  # warm-up: bandwidth estimation ramps the browsers' bitrate up
        conference_id = service.hub.participants(room_id)[0].conference_id
        conference = service.relay.conference(conference_id)
        before, cpu0, wall0 = conference.stats(), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        after, cpu1, wall1 = conference.stats(), time.process_time(), time.monotonic()
    finally:
        for page in pages:
            await page.close()
    packets_out = after.packets_out - before.packets_out
    packets_in = after.packets_in - before.packets_in
    cpu = cpu1 - cpu0
    wall = wall1 - wall0
    return {
        "publishers": len(users),
        "seconds": round(wall, 2),
        "packets_in": packets_in,
        "packets_out": packets_out,
        "mbit_out": round((after.bytes_out - before.bytes_out) * 8 / wall / 1e6, 2),
        "cpu_share": round(cpu / wall, 3),
        "cpu_us_per_packet_out": round(cpu * 1e6 / packets_out, 1) if packets_out else float("nan"),
        "idle_cpu_share": round(idle_rate, 3),
        "cpu_us_per_packet_out_minus_idle": round(max(0.0, cpu - idle_rate * wall) * 1e6 / packets_out, 1)
        if packets_out
        else float("nan"),
    }


async def main_async(args: argparse.Namespace) -> None:
    check_prerequisites()
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="visio-bench-browser-") as tmp:
        root = Path(tmp)
        client_port, service_port = free_port(), free_port()
        config_path, registration = write_service_files(
            root / "visio",
            homeserver_url=f"http://127.0.0.1:{client_port}",
            server_name=f"localhost:{client_port}",
            port=service_port,
            log_level="WARNING",
        )
        hs = LocalSynapse(root / "hs", client_port=client_port, appservice_registration_files=[registration])
        await hs.start()
        service = Service(load_config(config_path)[0])
        await service.start()
        runner, base = await harness_server()
        users: list[MatrixUser] = []
        try:
            for i in range(max(2, args.publishers)):
                user_id = await hs.register_user(f"bench{i}{uuid.uuid4().hex[:4]}", PASSWORD)
                users.append(await MatrixUser.login(hs.base_url, user_id, PASSWORD, root / "users" / user_id))
            room_id = await users[0].create_room(
                "bench call", invite=[service.bot_user_id] + [u.user_id for u in users[1:]]
            )
            for user in users[1:]:
                await user.join(room_id)
            await users[0].wait_for_membership(room_id, service.bot_user_id, "join", timeout=30)

            async with async_playwright() as pw:
                t0 = time.monotonic()
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS)
                )
                launch_s = time.monotonic() - t0
                print(f"Chromium started in {launch_s:.2f}s")
                try:
                    print(
                        f"join time (second participant; token request -> first decoded frame), {args.runs} runs:"
                    )
                    joins = await measure_joins(browser, base, service, users[:2], room_id, args.runs)
                    print(f"relay CPU with {args.publishers} browser publishers over {args.seconds:.0f}s:")
                    cpu = await measure_cpu(
                        browser, base, service, users[: args.publishers], room_id, args.seconds
                    )
                finally:
                    await browser.close()
        finally:
            for user in users:
                await user.close()
            await runner.cleanup()
            await service.stop()
            await hs.stop()

    medians = {key: statistics.median(r[key] for r in joins) for key in joins[0]}
    print(
        f"join: median first frame {medians['first_frame_ms']:.0f} ms after the token request"
        f" (token {medians['token_ms']:.0f} ms, connect + publish {medians['connect_publish_ms']:.0f} ms)"
        f" over {len(joins)} runs"
    )
    print(
        f"relay: {cpu['packets_out']} packets forwarded in {cpu['seconds']}s ({cpu['mbit_out']} Mbit/s out),"
        f" this process {cpu['cpu_share'] * 100:.0f}% of a core,"
        f" {cpu['cpu_us_per_packet_out']} us CPU per forwarded packet; idle baseline"
        f" {cpu['idle_cpu_share'] * 100:.0f}% of a core, so {cpu['cpu_us_per_packet_out_minus_idle']} us"
        " per packet above idle"
    )
    summary = {
        "chromium_launch_s": round(launch_s, 2),
        "join_runs": len(joins),
        **{f"join_{key}_median": round(value, 1) for key, value in medians.items()},
        **{f"relay_{key}": value for key, value in cpu.items()},
    }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="join-time runs (median reported)")
    parser.add_argument("--publishers", type=int, default=3, help="browser publishers for the CPU figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU measurement window")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("nio").setLevel(logging.ERROR)  # "Missing session for device ...": test users' noise
    if args.runs < 1 or args.publishers < 2:
        parser.error("need --runs >= 1 and --publishers >= 2")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
