"""``scripts/demo --federation``: two ministries (A, B) on loopback, each a Synapse + its own service.

Each ministry's homeserver federates with the other; each service pins the other's bot and links
with its server (``devstack.federation``). An encrypted room holds two users of each ministry and
both bots. Without ``--check`` it prints the logins and runs until Ctrl-C. With ``--check`` it runs
a cross-ministry call: every user joins with the reference client through ITS OWN ministry's bot,
each publishing its own colour and tone; it checks that everyone receives everyone (content and
user ids), prints per participant the time to first frame and the frames from each other one and
which relay served them, and exits 0 only if all of it worked.

The services run as their own processes through the real CLI (``visio-matrix run``), as in
``scripts/demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from visio_matrix.devstack.call_check import CHECK_TIMEOUT_S, CallResult, run_call_within
from visio_matrix.devstack.demo import _password_for, _wait_http, stop_process
from visio_matrix.devstack.federation import Ministry, shared_room, start_ministries, stop_ministries
from visio_matrix.devstack.user import MatrixUser

NAMES = ("A", "B")
# Two users per ministry: (ministry, localpart, display name).
DEMO_USERS = (("A", "alice", "Alice"), ("A", "bob", "Bob"), ("B", "carol", "Carol"), ("B", "dave", "Dave"))


@contextlib.asynccontextmanager
async def running_services(ministries: Sequence[Ministry]) -> AsyncIterator[None]:
    """Each ministry's service as a ``visio-matrix run`` process; all stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        waits = []
        for m in ministries:
            log_path = m.config_path.parent / "service.log"
            with log_path.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "visio_matrix", "run", "-c", str(m.config_path)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=m.workdir,
                )
            procs.append(proc)
            waits.append(_wait_http(m.service_url + "/health/ready", 60, proc, log_path))
        await asyncio.gather(*waits)
        yield
    finally:
        for proc in procs:
            stop_process(proc)


async def login_users(ministries: dict[str, Ministry], state: Path) -> dict[str, MatrixUser]:
    users: dict[str, MatrixUser] = {}
    try:
        for name, localpart, display in DEMO_USERS:
            m = ministries[name]
            user_id = await m.hs.register_user(localpart, m.password, displayname=f"{display} ({name})")
            users[localpart] = await MatrixUser.login(
                m.hs.base_url, user_id, m.password, state / "clients" / f"{localpart}-{time.time_ns()}"
            )
    except BaseException:
        await asyncio.gather(*(u.close() for u in users.values()), return_exceptions=True)
        raise
    return users


async def demo_room(ministries: dict[str, Ministry], users: dict[str, MatrixUser], state: Path) -> str:
    """The encrypted room of both ministries (made once, remembered in the state folder)."""
    room_file = state / "room.json"
    if room_file.exists():
        return str(json.loads(room_file.read_text())["room_id"])
    alice, others = users["alice"], [u for name, u in users.items() if name != "alice"]
    bots = [m.bot_user_id for m in ministries.values()]
    room_id = await shared_room(alice, others, bots, name="Visio: two ministries")
    room_file.write_text(json.dumps({"room_id": room_id}))
    return room_id


def ministry_of(ministries: dict[str, Ministry], user_id: str) -> Ministry:
    return next(m for m in ministries.values() if user_id.endswith(f":{m.server_name}"))


async def run_check(
    ministries: dict[str, Ministry], users: dict[str, MatrixUser], room_id: str, state: Path
) -> bool:
    """The cross-ministry call: everyone through their own bot; per-participant figures."""
    people = [(u.user_id, ministry_of(ministries, u.user_id).password) for u in users.values()]
    homes = [
        (m.hs.base_url, m.bot_user_id) for m in (ministry_of(ministries, u.user_id) for u in users.values())
    ]
    starter = users["alice"]
    try:
        result = await run_call_within(
            CHECK_TIMEOUT_S,
            homes[0][0],
            ministries["A"].bot_user_id,
            room_id,
            starter,
            people,
            state / "call-clients",
            timeout=60.0,
            homes=homes,
        )
    except Exception as exc:
        print(f"[check] FAILED: cross-ministry call: {type(exc).__name__}: {exc}")
        return False
    print_figures(ministries, result)
    return result.ok


def print_figures(ministries: dict[str, Ministry], result: CallResult) -> None:
    print(
        f"[check] {len(result.reports)}-participant call across ministries "
        f"(bot replied to !visio start in {result.start_reply_s * 1000:.0f}ms):"
    )
    for report in result.reports:
        own = ministry_of(ministries, report.user_id)
        status = (
            "OK" if report.content_ok and not report.error else f"FAILED ({report.error or 'wrong media'})"
        )
        print(
            f"[check]   {report.user_id} (ministry {own.name}), served by {report.served_by or '?'}: {status}"
        )
        for other, peer in report.peers.items():
            far = ministry_of(ministries, other)
            route = f"relay {own.name}" if far is own else f"relay {far.name} -> link -> relay {own.name}"
            first = f"{peer.first_frame_after_s:.2f}s" if peer.first_frame_after_s is not None else "never"
            video = peer.video.frames if peer.video else 0
            audio = peer.audio.frames if peer.audio else 0
            print(
                f"[check]     from {other}: first frame {first} after !visio start, "
                f"video {video} frames, audio {audio} frames, via {route}"
            )


def print_welcome(
    ministries: dict[str, Ministry], users: dict[str, MatrixUser], room_id: str, state: Path
) -> None:
    lines = ["", "visio-matrix two-ministry demo is running.", ""]
    for m in ministries.values():
        lines += [
            f"  Ministry {m.name}: homeserver {m.hs.base_url} (server name {m.server_name})",
            f"    visio-matrix {m.service_url}  bot {m.bot_user_id}  logs {m.config_path.parent}/service.log",
        ]
    lines += ["", "  Logins (homeserver URL, user id, password):"]
    for user in users.values():
        m = ministry_of(ministries, user.user_id)
        lines.append(f"    {m.hs.base_url}  {user.user_id}  {m.password}")
    lines += [
        "",
        f"  Encrypted room of both ministries: {room_id}",
        "",
        "Each user's calls go through their own ministry's bot; the two relays link with each other.",
        f"State: {state}. Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines))


async def main_async(args: argparse.Namespace) -> int:
    root = Path(args.state).resolve()
    state = root / ("demo-federation-check" if args.check else "demo-federation")
    if args.check:
        shutil.rmtree(state, ignore_errors=True)
    t0 = time.monotonic()
    state.mkdir(parents=True, exist_ok=True)
    password = _password_for(state)
    print(f"[setup] starting ministries {', '.join(NAMES)} (homeservers, bot devices, pinned keys)...")
    started = await start_ministries(state, NAMES)
    print(f"[setup] ministries ready in {time.monotonic() - t0:.1f}s; starting both services...")
    ministries = {m.name: m for m in started}
    try:
        for m in started:
            m.password = password
        async with running_services(started):
            t_up = time.monotonic() - t0
            users = await login_users(ministries, state)
            try:
                room_id = await demo_room(ministries, users, state)
                t_ready = time.monotonic() - t0
                if args.check:
                    ok = await run_check(ministries, users, room_id, state)
                    print(
                        f"demo --federation --check: {'OK' if ok else 'FAILED'} | stack up {t_up:.1f}s"
                        f" | room ready {t_ready:.1f}s | total {time.monotonic() - t0:.1f}s"
                    )
                    return 0 if ok else 1
                print_welcome(ministries, users, room_id, state)
            finally:
                await asyncio.gather(*(u.close() for u in users.values()), return_exceptions=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            print("\nstopping both services and homeservers...")
    finally:
        await stop_ministries(started)
    return 0


def run(args: argparse.Namespace) -> int:
    """``main_async``, then an exit that cannot hang on a call client's leftover decoder threads.

    aiortc decodes in non-daemon threads that only end when their peer connection is closed; seen
    here: a client connection renegotiated by the link whose close did not finish. Everything of
    ours is stopped by then, so the demo says so and exits with its result instead of hanging.
    """
    code = asyncio.run(main_async(args))
    deadline = time.monotonic() + 10
    for thread in threading.enumerate():
        if thread.name.endswith("-decoder"):
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t.name.endswith("-decoder") and t.is_alive()]
    if stuck:
        print(
            f"[teardown] {len(stuck)} aiortc decoder thread(s) of the call clients never stopped"
            " (a peer connection close that did not finish); exiting anyway",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
