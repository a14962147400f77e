"""The relay process under test: an HTTP signaling endpoint on loopback in front of one backend.

``python -m scripts.bench.relay_server --backend {visio,transcoding} --host 127.0.0.1 --port P``

Protocol (JSON over HTTP, loopback only):
- ``POST /publish {peer, sdp}`` -> ``{sdp}``: the publisher offers, the backend answers;
- ``POST /subscribe {peer, feeds}`` -> ``{offer}``: the backend offers the feeds' tracks;
- ``POST /answer {peer, sdp}`` -> ``{offer}`` or ``{}``: the subscriber's answer; a renegotiation
  the backend wants next comes back as a new offer.
- one-connection-per-participant backends (ours): ``POST /join {peer, sdp|null}`` -> ``{sdp}`` (answer
  to the peer's offer) or ``{offer}``; ``POST /poll {peer}`` -> ``{offer}`` or ``{}`` after 20 s: the
  backend's next renegotiation offer, answered through ``/answer``;
- ``GET /stats`` -> the backend's own counters (JSON object).

Only this process runs the relay, so ``/proc/<pid>/stat`` of this process is the relay's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import signal
import sys
import time
from typing import Any, Protocol

from aiohttp import web

from .netpatch import use_host_address


class Backend(Protocol):
    async def publish(self, peer: int, sdp: str) -> str: ...

    async def subscribe(self, peer: int, feeds: list[int]) -> str | None: ...

    async def answer(self, peer: int, sdp: str) -> str | None: ...

    async def join(self, peer: int, sdp: str | None) -> dict[str, str]: ...

    async def poll(self, peer: int) -> str | None: ...

    def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


BACKEND_KEY = web.AppKey("backend", Backend)


async def handle_publish(request: web.Request) -> web.Response:
    body = await request.json()
    sdp = await request.app[BACKEND_KEY].publish(int(body["peer"]), str(body["sdp"]))
    return web.json_response({"sdp": sdp})


async def handle_subscribe(request: web.Request) -> web.Response:
    body = await request.json()
    offer = await request.app[BACKEND_KEY].subscribe(int(body["peer"]), [int(f) for f in body["feeds"]])
    return web.json_response({"offer": offer} if offer is not None else {})


async def handle_answer(request: web.Request) -> web.Response:
    body = await request.json()
    offer = await request.app[BACKEND_KEY].answer(int(body["peer"]), str(body["sdp"]))
    return web.json_response({"offer": offer} if offer is not None else {})


async def handle_join(request: web.Request) -> web.Response:
    body = await request.json()
    sdp = body.get("sdp")
    return web.json_response(await request.app[BACKEND_KEY].join(int(body["peer"]), sdp))


async def handle_poll(request: web.Request) -> web.Response:
    body = await request.json()
    offer = await request.app[BACKEND_KEY].poll(int(body["peer"]))
    return web.json_response({"offer": offer} if offer is not None else {})


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND_KEY].stats())


def make_backend(name: str, host: str, port_min: int, port_max: int) -> Backend:
    if name == "transcoding":
        from .backend_transcoding import TranscodingBackend

        return TranscodingBackend()
    if name == "visio":
        from .backend_visio import VisioBackend

        return VisioBackend(host, port_min, port_max)
    raise ValueError(f"unknown backend {name!r}")


async def serve(backend_name: str, host: str, port: int, port_min: int, port_max: int) -> None:
    backend = make_backend(backend_name, host, port_min, port_max)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[BACKEND_KEY] = backend
    app.router.add_post("/publish", handle_publish)
    app.router.add_post("/subscribe", handle_subscribe)
    app.router.add_post("/answer", handle_answer)
    app.router.add_post("/join", handle_join)
    app.router.add_post("/poll", handle_poll)
    app.router.add_get("/stats", handle_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("READY", flush=True)
    await stop.wait()
    try:
        await asyncio.wait_for(backend.close(), 20)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True, choices=["visio", "transcoding"])
    parser.add_argument("--host", default="127.0.0.1", help="ICE host candidate address")
    parser.add_argument("--port", type=int, required=True, help="HTTP signaling port on 127.0.0.1")
    parser.add_argument("--udp-ports", default="41000-42999", help="UDP range for the visio relay")
    parser.add_argument("--profile", help="write cProfile stats of the relay's event loop to this file")
    args = parser.parse_args(argv)
    if args.backend == "transcoding":  # our relay restricts its own candidates (RelayOptions.host_addresses)
        use_host_address(args.host)
    port_min, port_max = (int(x) for x in args.udp_ports.split("-"))
    if args.profile:
        profiler = cProfile.Profile(time.thread_time)  # CPU time of the loop thread, not wall time
        profiler.enable()
        try:
            asyncio.run(serve(args.backend, args.host, args.port, port_min, port_max))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        asyncio.run(serve(args.backend, args.host, args.port, port_min, port_max))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
