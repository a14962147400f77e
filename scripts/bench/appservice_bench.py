"""Appservice benchmark: service start-up time and transactions/s of /_matrix/app/v1/transactions.

Runs a real Synapse and the real service (in this process), then PUTs transactions the way a
homeserver does (one at a time, each with a fresh txnId) and compares, in the same run, with a
bare aiohttp endpoint that only answers ``{}`` (the HTTP floor on this machine). Events are chat
messages that are not commands, so the figure is the cost of the path every event takes: auth,
parsing, transaction and event de-duplication in storage, dispatch. Prints medians and ratios, and
one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from visio_matrix.app import Service
from visio_matrix.config import load_config
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port


def chat_event(room_id: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"${uuid.uuid4().hex}",
        "room_id": room_id,
        "sender": "@someone:bench",
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": f"hello {n}"},
        "origin_server_ts": n,
    }


async def run_load(url: str, token: str, events_per_txn: int, seconds: float) -> float:
    """Sequential transactions for ``seconds``; returns transactions/s."""
    headers = {"Authorization": f"Bearer {token}"}
    count = 0
    async with aiohttp.ClientSession() as http:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            body = {"events": [chat_event("!bench:bench", i) for i in range(events_per_txn)]}
            async with http.put(
                f"{url}/_matrix/app/v1/transactions/{uuid.uuid4().hex}", json=body, headers=headers
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
            count += 1
        return count / (time.perf_counter() - started)


async def fresh_postgres_database(admin_url: str) -> str:
    """A new empty database next to ``admin_url`` (named visio_bench_<random>, dropped at the end)."""
    import asyncpg

    name = f"visio_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_postgres_database(admin_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def time_process_startup(config_path: Path, public_url: str) -> float:
    """Seconds from spawning ``python -m visio_matrix run`` to its first 200 on /health/ready."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "visio_matrix",
        "run",
        "-c",
        str(config_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"visio-matrix run exited with {proc.returncode}")
                try:
                    async with http.get(public_url + "/health/ready") as resp:
                        if resp.status == 200:
                            return time.perf_counter() - t0
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
    finally:
        proc.terminate()
        await proc.wait()


async def floor_server(port: int) -> web.AppRunner:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.put("/_matrix/app/v1/transactions/{txn}", ok)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="visio-bench-") as tmp:
        root = Path(tmp)
        client_port, service_port = free_port(), free_port()
        databases: dict[str, str | None] = {"sqlite": None}
        if args.postgres:
            databases["postgresql"] = await fresh_postgres_database(args.postgres)
        results: dict[str, Any] = {}
        for db_name, db_url in databases.items():
            workdir = root / db_name
            config_path, registration = write_service_files(
                workdir,
                homeserver_url=f"http://127.0.0.1:{client_port}",
                server_name=f"localhost:{client_port}",
                port=service_port,
                database_url=db_url,
                log_level="WARNING",
            )
            hs = LocalSynapse(
                root / f"hs-{db_name}", client_port=client_port, appservice_registration_files=[registration]
            )
            await hs.start()
            try:
                config = load_config(config_path)[0]
                startups = []
                for _ in range(args.restarts):
                    svc = Service(config)
                    t0 = time.perf_counter()
                    await svc.start()
                    startups.append(time.perf_counter() - t0)
                    await svc.stop()
                process_startups = [
                    await time_process_startup(config_path, config.appservice.public_url) for _ in range(3)
                ]
                svc = Service(config)
                await svc.start()
                floor_port = free_port()
                floor = await floor_server(floor_port)
                try:
                    url = config.appservice.public_url
                    for size in args.sizes:
                        ours, base = [], []
                        for _ in range(args.rounds):
                            # Interleaved rounds: both see the same machine load.
                            ours.append(await run_load(url, config.appservice.hs_token, size, args.seconds))
                            base.append(
                                await run_load(f"http://127.0.0.1:{floor_port}", "x", size, args.seconds)
                            )
                        o, b = statistics.median(ours), statistics.median(base)
                        results[f"{db_name}_txn_per_s_{size}ev"] = round(o, 1)
                        results[f"{db_name}_events_per_s_{size}ev"] = round(o * size, 1)
                        results[f"{db_name}_ratio_vs_http_floor_{size}ev"] = round(o / b, 3)
                        print(
                            f"[{db_name}] {size:>3} events/txn: {o:8.1f} txn/s ({o * size:8.1f} events/s)"
                            f" | bare aiohttp floor {b:8.1f} txn/s | ratio {o / b:.2f}"
                        )
                finally:
                    await floor.cleanup()
                    await svc.stop()
                med = statistics.median(startups)
                results[f"{db_name}_startup_s_median"] = round(med, 3)
                pmed = statistics.median(process_startups)
                results[f"{db_name}_process_startup_s_median"] = round(pmed, 3)
                print(
                    f"[{db_name}] `visio-matrix run` process start to /health/ready 200: median {pmed:.2f}s over 3"
                )
                print(
                    f"[{db_name}] service start-up (store, device, first sync, listener, ping): median {med:.2f}s over {len(startups)}"
                )
            finally:
                await hs.stop()
        if databases.get("postgresql"):
            await drop_postgres_database(args.postgres, str(databases["postgresql"]))
        print(json.dumps({"benchmark": "appservice", **results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measuring round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="events per transaction")
    parser.add_argument("--restarts", type=int, default=5, help="service start-ups to time")
    parser.add_argument(
        "--postgres",
        default=None,
        help="also measure PostgreSQL: an admin URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres); "
        "a fresh database is created next to it",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
