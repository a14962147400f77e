"""Several ministries on one machine: federating Synapses on loopback, each with its own visio-matrix.

Used by ``scripts/demo --federation`` and the federation integration tests (issue 5). Each ministry
is a homeserver named ``localhost:<federation port>`` (TLS federation listener, self-signed) plus a
service config and appservice registration in its own folder. ``start_ministries`` boots them in
three steps, as admins of real ministries would:

1. write each service's files and start every homeserver with its registration;
2. run each service once, so its bot creates its device and cross-signs it, then read each bot's
   identity from its homeserver (``fetch_bot_identity``, what ``visio-matrix identity`` prints);
3. write the other ministries' identities into each config (``federation.peers``) and link with
   them (``policy.link_servers``), then apply per-ministry policy overrides.

The services are left stopped: the caller runs them (``Ministry.service()``, or the CLI).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from visio_matrix.app import Service
from visio_matrix.config import Config, load_config
from visio_matrix.crypto.peer_trust import fetch_bot_identity
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port
from visio_matrix.devstack.user import MatrixUser

DEFAULT_PASSWORD = "correct horse battery staple"
# Each ministry's relay gets its own UDP port range, so the figures of one are never the other's.
UDP_PORTS_PER_MINISTRY = 1000
UDP_PORT_BASE = 40000


class MinistryError(RuntimeError):
    """A ministry could not be set up (its error names the ministry and the step)."""


@dataclass
class Ministry:
    """One ministry: its homeserver (running once `start_ministries` returns) and its service's files."""

    name: str
    hs: LocalSynapse
    workdir: Path
    config_path: Path
    bot_user_id: str
    service_port: int
    password: str = DEFAULT_PASSWORD

    @property
    def server_name(self) -> str:
        return self.hs.server_name

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    def config(self) -> Config:
        return load_config(self.config_path)[0]

    def service(self) -> Service:
        """A new, not yet started service of this ministry (same files: its state survives restarts)."""
        return Service(self.config())

    async def register(self, prefix: str) -> str:
        """A fresh user (``prefix`` + random suffix) with this ministry's password; its user id."""
        return await self.hs.register_user(f"{prefix}{uuid.uuid4().hex[:6]}", self.password)

    async def new_user(self, prefix: str) -> MatrixUser:
        """A fresh user of this ministry, logged in on a new E2EE device (close it when done)."""
        user_id = await self.register(prefix)
        return await self.login(user_id)

    async def login(self, user_id: str) -> MatrixUser:
        """A new E2EE device of an existing user of this ministry (close it when done)."""
        store = self.workdir / "users" / f"{user_id}-{uuid.uuid4().hex[:6]}"
        return await MatrixUser.login(self.hs.base_url, user_id, self.password, store)


def _ports(root: Path, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Ports per ministry, kept in ``root/ports.json`` so a restarted stack keeps its server names."""
    path = root / "ports.json"
    if path.exists():
        stored: dict[str, dict[str, int]] = json.loads(path.read_text())
        if sorted(stored) == sorted(names):
            return stored
    taken: set[int] = set()

    def pick() -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    ports = {name: {"client": pick(), "federation": pick(), "service": pick()} for name in names}
    path.write_text(json.dumps(ports))
    return ports


def _resolve(value: Any, server_names: Mapping[str, str]) -> Any:
    """Ministry names in a list of servers (``["B"]``) stand for their server names."""
    if isinstance(value, list):
        return [server_names.get(v, v) if isinstance(v, str) else v for v in value]
    return value


def rewrite_config(
    config_path: Path,
    peers: Sequence[Mapping[str, Any]],
    link_servers: Sequence[str],
    policy: Mapping[str, Any],
    server_names: Mapping[str, str],
) -> None:
    """Set ``federation.peers`` and ``policy.link_servers``, then the ``policy`` overrides; the
    result must load (a ``ConfigError`` names the key otherwise)."""
    data = yaml.safe_load(config_path.read_text()) or {}
    data["federation"] = {**(data.get("federation") or {}), "peers": [dict(p) for p in peers]}
    section = dict(data.get("policy") or {})
    section["link_servers"] = list(link_servers)
    section.update({key: _resolve(value, server_names) for key, value in policy.items()})
    data["policy"] = section
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_config(config_path)


async def _bootstrap(ministry: Ministry) -> dict[str, Any]:
    """Run the service once (bot device, cross-signing), then read its bot's identity."""
    service = ministry.service()
    try:
        await service.start()
    except Exception as exc:
        raise MinistryError(f"ministry {ministry.name}: first start of its service failed: {exc}") from exc
    finally:
        await service.stop()
    identity = await fetch_bot_identity(ministry.config())
    if identity.master_key is None and not identity.devices:
        raise MinistryError(f"ministry {ministry.name}: its bot {identity.user_id} published no keys")
    return dict(identity.peer_entry())


async def start_ministries(
    root: Path,
    names: Sequence[str] = ("A", "B"),
    *,
    policy: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Ministry]:
    """Start one federating homeserver per name under ``root/<name>`` and prepare its service.

    Each service pins the other ministries' bots and links with their servers; ``policy[name]``
    then overrides keys of that ministry's ``policy`` section, where ministry names in lists stand
    for their server names: ``{"A": {"link_servers": ["B"]}, "B": {"relay_onwards": True}}``.
    Files (and ports, in ``root/ports.json``) are kept, so calling it again on the same ``root``
    restarts the same ministries. On failure every homeserver started here is stopped again.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ports = _ports(root, names)
    ministries: list[Ministry] = []
    for index, name in enumerate(names):
        p = ports[name]
        server_name = f"localhost:{p['federation']}"
        workdir = root / name
        service_url = f"http://127.0.0.1:{p['service']}"
        low = UDP_PORT_BASE + index * UDP_PORTS_PER_MINISTRY
        config_path, registration = write_service_files(
            workdir / "visio",
            homeserver_url=f"http://127.0.0.1:{p['client']}",
            server_name=server_name,
            port=p["service"],
            udp_port_min=low,
            udp_port_max=low + UDP_PORTS_PER_MINISTRY - 1,
        )
        hs = LocalSynapse(
            workdir / "synapse",
            server_name=server_name,
            client_port=p["client"],
            federation_port=p["federation"],
            appservice_registration_files=[registration],
            rtc_focus_url=service_url,  # Element Call users of this ministry use its own focus
        )
        bot = load_config(config_path)[0].appservice.bot_user_id(server_name)
        ministries.append(Ministry(name, hs, workdir, config_path, bot, p["service"]))
    try:
        await asyncio.gather(*(m.hs.start() for m in ministries))
        entries = await asyncio.gather(*(_bootstrap(m) for m in ministries))
        server_names = {m.name: m.server_name for m in ministries}
        for m in ministries:
            others = [(o, e) for o, e in zip(ministries, entries, strict=True) if o is not m]
            rewrite_config(
                m.config_path,
                [e for _, e in others],
                [o.server_name for o, _ in others],
                (policy or {}).get(m.name, {}),
                server_names,
            )
    except BaseException:
        await stop_ministries(ministries)
        raise
    return ministries


async def stop_ministries(ministries: Sequence[Ministry]) -> None:
    """Stop every ministry's homeserver (services are the caller's to stop)."""
    await asyncio.gather(*(m.hs.stop() for m in ministries), return_exceptions=True)


async def joined_members(user: MatrixUser, room_id: str) -> set[str]:
    """Who ``user``'s homeserver says has joined the room (what its clients will show)."""
    url = f"{user.client.homeserver}/_matrix/client/v3/rooms/{room_id}/joined_members"
    headers = {"Authorization": f"Bearer {user.access_token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(url, headers=headers) as response:
            body = await response.json()
            if response.status != 200:
                raise MinistryError(
                    f"joined_members of {room_id} for {user.user_id}: {response.status} {body}"
                )
    return set(body.get("joined") or {})


async def wait_joined(user: MatrixUser, room_id: str, wanted: set[str], timeout: float) -> None:
    """Wait until ``user``'s homeserver sees every user in ``wanted`` joined.

    Asks the homeserver rather than the client's membership view: a client's sync can list a
    member's invite after its join when both arrive at once (seen with federated joins).
    """
    deadline = time.monotonic() + timeout
    while True:
        missing = wanted - await joined_members(user, room_id)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{user.user_id}: after {timeout}s its homeserver still does not show "
                f"{', '.join(sorted(missing))} joined in {room_id}"
            )
        await asyncio.sleep(0.2)


async def shared_room(
    creator: MatrixUser,
    members: Sequence[MatrixUser],
    bots: Sequence[str],
    *,
    name: str = "Ministries",
    timeout: float = 60,
    bot_power_level: int | None = 50,
) -> str:
    """An encrypted room made by ``creator`` with ``members`` (any homeserver) and ``bots``.

    Returns once every member has joined (users of other homeservers over federation; bots by
    themselves, so their services must be running), every user's homeserver shows everyone joined,
    and every user knows every other user's device. ``bot_power_level`` lets the bots manage the room's call widget.
    """
    everyone = [m.user_id for m in members] + list(bots)
    room_id = await creator.create_room(name, invite=everyone, encrypted=True)

    async def join(member: MatrixUser) -> None:
        await member.wait_for_membership(room_id, member.user_id, "invite", timeout=timeout)
        await member.join(room_id, via=creator.user_id.split(":", 1)[1])

    await asyncio.gather(*(join(m) for m in members))
    users = [creator, *members]
    wanted = {creator.user_id, *everyone}
    await asyncio.gather(*(wait_joined(user, room_id, wanted, timeout) for user in users))
    if bot_power_level is not None:
        for bot in bots:
            await creator.set_power_level(room_id, bot, bot_power_level)
    await asyncio.gather(
        *(
            user.wait_for_device(other.user_id, other.device_id, timeout=timeout)
            for user in users
            for other in users
            if other is not user
        )
    )
    return room_id
