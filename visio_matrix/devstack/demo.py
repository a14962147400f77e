"""``scripts/demo``: a local Synapse (SQLite, loopback) + the service, two demo users, an encrypted room.

Without ``--check`` it prints how to log in and runs until Ctrl-C. With ``--check`` it plays a demo
user (``!visio start`` / ``status`` / ``stop`` in the encrypted room, each reply decrypted), prints
one summary line with the timings and exits 0 only if every step worked.

The service runs as its own process through the real CLI (``visio-matrix run``), as an admin runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from visio_matrix.devstack.call_check import CHECK_TIMEOUT_S, run_call_within
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port
from visio_matrix.devstack.user import MatrixUser, MessageView

DEMO_USERS = (("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"))


@dataclass(frozen=True)
class DemoStack:
    hs: LocalSynapse
    service: subprocess.Popen[bytes]
    service_url: str
    config_path: Path
    bot_user_id: str
    state: Path


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s (a service stops its calls and tells its peers first)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {proc.returncode}; see {log_path}:\n{_tail(log_path)}"
                )
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the service did not become ready in {timeout:.0f}s; see {log_path}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def demo_stack(state: Path) -> AsyncIterator[DemoStack]:
    """Starts Synapse and the service; stops both on exit, whatever happens."""
    state.mkdir(parents=True, exist_ok=True)
    ports_file = state / "ports.json"
    if ports_file.exists():
        ports = json.loads(ports_file.read_text())
    else:
        ports = {"synapse": _port(8008), "service": _port(29380)}
        ports_file.write_text(json.dumps(ports))
    server_name = f"localhost:{ports['synapse']}"
    config_path, registration = write_service_files(
        state / "visio",
        homeserver_url=f"http://127.0.0.1:{ports['synapse']}",
        server_name=server_name,
        port=ports["service"],
    )
    service_url = f"http://127.0.0.1:{ports['service']}"
    hs = LocalSynapse(
        state / "synapse",
        server_name=server_name,
        client_port=ports["synapse"],
        appservice_registration_files=[registration],
        # Element Call finds the service's MatrixRTC focus through the homeserver (MSC4143).
        rtc_focus_url=service_url,
    )
    await hs.start()
    service_log = state / "visio" / "service.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with service_log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "visio_matrix", "run", "-c", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=state,
            )
        await _wait_http(service_url + "/health/ready", 60, proc, service_log)
        yield DemoStack(hs, proc, service_url, config_path, f"@visio:{server_name}", state)
    finally:
        if proc is not None:
            stop_process(proc)
        await hs.stop()


async def demo_room(stack: DemoStack, users: dict[str, MatrixUser]) -> str:
    """The encrypted demo room with both users and the bot (made once, remembered in the state folder)."""
    room_file = stack.state / "room.json"
    if room_file.exists():
        return str(json.loads(room_file.read_text())["room_id"])
    alice, others = users["alice"], [u for name, u in users.items() if name != "alice"]
    room_id = await alice.create_room(
        "Visio demo", invite=[u.user_id for u in others] + [stack.bot_user_id], encrypted=True
    )
    for user in others:
        await user.join(room_id)
    await alice.wait_for_membership(room_id, stack.bot_user_id, "join", timeout=60)
    room_file.write_text(json.dumps({"room_id": room_id}))
    return room_id


def _password_for(state: Path) -> str:
    path = state / "demo-password"
    if not path.exists():
        import secrets

        path.write_text(secrets.token_urlsafe(9))
        path.chmod(0o600)
    return path.read_text().strip()


async def login_users(stack: DemoStack, password: str) -> dict[str, MatrixUser]:
    users: dict[str, MatrixUser] = {}
    for localpart, display in DEMO_USERS:
        user_id = await stack.hs.register_user(localpart, password, displayname=display)
        users[localpart] = await MatrixUser.login(
            stack.hs.base_url, user_id, password, stack.state / "clients" / f"{localpart}-{time.time_ns()}"
        )
    return users


def bot_says(bot: str, prefix: str) -> Callable[[MessageView], bool]:
    return lambda m: m.sender == bot and (m.body or "").startswith(prefix)


async def check_focus_discovery(stack: DemoStack, user: MatrixUser) -> bool:
    """The homeserver advertises the service as the MatrixRTC LiveKit focus (MSC4143)."""
    url = f"{stack.hs.base_url}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
    headers = {"Authorization": f"Bearer {user.access_token}"}
    try:
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            body = await resp.json() if resp.status == 200 else {}
    except aiohttp.ClientError as exc:
        print(f"[check] FAILED: MatrixRTC transport discovery: {exc}")
        return False
    transports = body.get("rtc_transports", []) if isinstance(body, dict) else []
    wanted = {"type": "livekit", "livekit_service_url": stack.service_url}
    if wanted not in transports:
        print(f"[check] FAILED: the homeserver does not advertise {wanted} (got HTTP {resp.status}: {body})")
        return False
    print(f"[check] MatrixRTC focus advertised: {stack.service_url}")
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{stack.service_url}/call/") as page:
            html = await page.text()
    except aiohttp.ClientError as exc:
        print(f"[check] FAILED: call page: {exc}")
        return False
    if page.status != 200 or "<html" not in html.lower():
        print(f"[check] FAILED: the call page at {stack.service_url}/call/ answered HTTP {page.status}")
        return False
    print(f"[check] browser call page served: {stack.service_url}/call/")
    return True


async def run_check(stack: DemoStack, users: dict[str, MatrixUser], room_id: str) -> bool:
    alice = users["alice"]
    if not await check_focus_discovery(stack, alice):
        return False
    timings: list[str] = []
    steps = [
        ("!visio start", "📞 Call started"),
        ("!visio status", "Call running for"),
        ("!visio stop", "📴 Call ended"),
    ]
    ok = True
    for command, expected in steps:
        started = time.monotonic()
        try:
            await alice.send_text(room_id, command)
            reply = await alice.wait_for_message(room_id, bot_says(stack.bot_user_id, expected), timeout=60)
        except Exception as exc:
            print(f"[check] FAILED: '{command}': {exc}")
            ok = False
            break
        if not (reply.encrypted and reply.decrypted):
            print(f"[check] FAILED: reply to '{command}' was not end-to-end encrypted")
            ok = False
            break
        timings.append(f"{command.split()[1]}={(time.monotonic() - started) * 1000:.0f}ms")
    if ok:
        print(f"[check] encrypted replies: {' '.join(timings)}")
        ok = await run_call_check(stack, users, room_id)
    return ok


async def run_call_check(stack: DemoStack, users: dict[str, MatrixUser], room_id: str) -> bool:
    """A 3-participant call in the encrypted room with the reference client: frames per pair, timings."""
    password = _password_for(stack.state)
    try:
        result = await run_call_within(
            CHECK_TIMEOUT_S,
            stack.hs.base_url,
            stack.bot_user_id,
            room_id,
            users["alice"],
            [(u.user_id, password) for u in users.values()],
            stack.state / "call-clients",
        )
    except Exception as exc:
        print(f"[check] FAILED: 3-participant call: {type(exc).__name__}: {exc}")
        return False
    print(f"[check] 3-participant call (bot replied to !visio start in {result.start_reply_s * 1000:.0f}ms):")
    for report in result.reports:
        print(f"[check]   {report.line()}")
    return result.ok


async def main_async(args: argparse.Namespace) -> int:
    root = Path(args.state).resolve()
    if args.check:
        state = root / "demo-check"
        shutil.rmtree(state, ignore_errors=True)
    else:
        state = root / "demo"
    t0 = time.monotonic()
    async with demo_stack(state) as stack:
        t_up = time.monotonic() - t0
        password = _password_for(state)
        users = await login_users(stack, password)
        try:
            room_id = await demo_room(stack, users)
            t_ready = time.monotonic() - t0
            if args.check:
                ok = await run_check(stack, users, room_id)
                total = time.monotonic() - t0
                print(
                    f"demo --check: {'OK' if ok else 'FAILED'} | stack up {t_up:.1f}s | room ready {t_ready:.1f}s"
                    f" | total {total:.1f}s"
                )
                return 0 if ok else 1
            print_welcome(stack, password, room_id)
        finally:
            for user in users.values():
                await user.close()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("\nstopping the service and Synapse...")
    return 0


def print_welcome(stack: DemoStack, password: str, room_id: str) -> None:
    print(
        f"""
visio-matrix demo is running.

  Homeserver (Synapse):  {stack.hs.base_url}   (server name {stack.hs.server_name})
  visio-matrix service:  {stack.service_url}   (health: /health/ready, metrics: /metrics)
  MatrixRTC focus:       {stack.service_url}   (advertised by the homeserver to Element Call)
  Browser call page:     {stack.service_url}/call/   (room widget; `!visio link` makes guest links)
  Bot:                   {stack.bot_user_id}
  Demo users:            {", ".join(f"@{u}:{stack.hs.server_name}" for u, _ in DEMO_USERS)}
  Password (all):       {password}
  Encrypted demo room:   {room_id}  ("Visio demo")

Log in with any Matrix client (homeserver {stack.hs.base_url}), open "Visio demo" and type
`!visio help`. Logs: {stack.state}/visio/service.log and {stack.hs.log_path}.
Press Ctrl-C to stop everything.
"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--check", action="store_true", help="run a scripted check, print a summary, exit")
    parser.add_argument("--state", default=os.environ.get("VISIO_DEMO_STATE", "state"), help="state folder")
    parser.add_argument(
        "--federation", action="store_true", help="two ministries (two homeservers, two services)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # nio warns about every device it has no Olm session with yet: normal in a fresh demo room.
    logging.getLogger("nio").setLevel(logging.ERROR)
    if args.federation:
        from visio_matrix.devstack import federation_demo

        return federation_demo.run(args)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
