"""Pytest fixtures for two or three ministries (issue 5): federating Synapses, each with its own service.

The homeservers and service files are made once per session and name (``start_ministries``: bots
cross-signed, each config pinning the other bots and linking with their servers) and stopped at the
end of the session. Each test then gets the services RUNNING on its own event loop, stopped after
the test, like the ``service`` fixture of ``synapse_fixtures``:

- ``ministries``: A and B, linking with each other.
- ``three_ministries``: A, B and C; A links with B only, B with A and C, C with A and B.
- ``three_ministries_onward``: A - B - C in a line, every policy allowing onward relaying.

Both give a `Federation`: ``fed["A"]`` is a `Ministry`, ``fed.service("B")`` its running `Service`;
``stop_service``/``start_service`` and ``stop_homeserver``/``start_homeserver`` fake faults. Users made
with ``fed.new_user(...)`` are closed, stopped services and homeservers started again, after the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from visio_matrix.app import Service
from visio_matrix.devstack.federation import Ministry, shared_room, start_ministries
from visio_matrix.devstack.user import MatrixUser


class MinistriesFactory:
    """Session cache of ministry sets by name; `close()` terminates every homeserver (blocking)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sets: dict[str, tuple[list[Ministry], tuple[Sequence[str], Any]]] = {}

    async def get(
        self,
        name: str,
        names: Sequence[str] = ("A", "B"),
        policy: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[Ministry]:
        options = (tuple(names), policy)
        cached = self._sets.get(name)
        if cached is not None:
            ministries, cached_options = cached
            if cached_options != options:
                raise ValueError(f"ministries {name!r} already made with other options: {cached_options}")
            # A homeserver a test stopped (and did not restart) comes back with its data.
            await asyncio.gather(*(m.hs.start() for m in ministries if not m.hs.running))
            return ministries
        ministries = await start_ministries(self.root / name, names, policy=policy)
        self._sets[name] = (ministries, options)
        return ministries

    def close(self) -> None:
        for ministries, _ in self._sets.values():
            for ministry in ministries:
                ministry.hs.terminate()
        self._sets.clear()


class Federation:
    """Ministries whose services run for one test, with fault switches and tracked users."""

    def __init__(self, ministries: Sequence[Ministry]) -> None:
        self.ministries = {m.name: m for m in ministries}
        self.services: dict[str, Service] = {}
        self._users: list[MatrixUser] = []

    def __getitem__(self, name: str) -> Ministry:
        return self.ministries[name]

    def service(self, name: str) -> Service:
        """The running service of ministry ``name`` (KeyError while stopped)."""
        return self.services[name]

    @property
    def bots(self) -> list[str]:
        return [m.bot_user_id for m in self.ministries.values()]

    async def start_service(self, name: str) -> Service:
        """Start ministry ``name``'s service (a new `Service` on the same files); returns it."""
        if name in self.services:
            return self.services[name]
        service = self.ministries[name].service()
        await service.start()
        self.services[name] = service
        return service

    async def stop_service(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is not None:
            await service.stop()

    async def stop_homeserver(self, name: str) -> None:
        await self.ministries[name].hs.stop()

    async def start_homeserver(self, name: str) -> None:
        await self.ministries[name].hs.start()

    async def new_user(self, name: str, prefix: str) -> MatrixUser:
        """A fresh user of ministry ``name`` on a new E2EE device, closed after the test."""
        user = await self.ministries[name].new_user(prefix)
        self._users.append(user)
        return user

    async def login(self, name: str, user_id: str) -> MatrixUser:
        """Another new device of an existing user of ministry ``name``, closed after the test."""
        user = await self.ministries[name].login(user_id)
        self._users.append(user)
        return user

    async def shared_room(self, creator: MatrixUser, members: Sequence[MatrixUser], **kwargs: Any) -> str:
        """An encrypted room with ``creator``, ``members`` and every ministry's bot, all joined."""
        return await shared_room(creator, members, self.bots, **kwargs)

    async def start(self) -> None:
        await asyncio.gather(*(self.start_service(name) for name in self.ministries))

    async def close(self) -> None:
        await asyncio.gather(*(u.close() for u in self._users), return_exceptions=True)
        self._users.clear()
        # End this test's calls: the homeservers and stores outlive the test, and a call still
        # active would be linked again by every later test's services (a running service ends an
        # empty call by itself once the far side reports its people gone; these stop at once).
        for service in self.services.values():
            for room_id in await service.hub.active_rooms():
                await service.hub.end_conference(room_id, "")
        await asyncio.gather(*(self.stop_service(n) for n in list(self.services)), return_exceptions=True)
        # The next test gets every homeserver up again.
        await asyncio.gather(*(m.hs.start() for m in self.ministries.values() if not m.hs.running))


@pytest.fixture(scope="session")
def ministries_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinistriesFactory]:
    factory = MinistriesFactory(tmp_path_factory.mktemp("ministries"))
    try:
        yield factory
    finally:
        factory.close()


async def _running(ministries: Sequence[Ministry]) -> AsyncIterator[Federation]:
    federation = Federation(ministries)
    try:
        await federation.start()
        yield federation
    finally:
        await federation.close()


@pytest_asyncio.fixture
async def ministries(ministries_factory: MinistriesFactory) -> AsyncIterator[Federation]:
    """Ministries A and B, linking with each other, services running for this test."""
    async for federation in _running(await ministries_factory.get("ab")):
        yield federation


@pytest_asyncio.fixture
async def three_ministries(ministries_factory: MinistriesFactory) -> AsyncIterator[Federation]:
    """Ministries A, B, C: A links with B only; B with A and C; C with A and B. Services running."""
    sets = await ministries_factory.get("abc", ("A", "B", "C"), policy={"A": {"link_servers": ["B"]}})
    async for federation in _running(sets):
        yield federation


@pytest_asyncio.fixture
async def three_ministries_onward(ministries_factory: MinistriesFactory) -> AsyncIterator[Federation]:
    """Ministries A, B, C in a line: A and C link with B only, B with both, and every policy allows
    relaying onward (``relay_onwards``). Services running."""
    onward = {
        "A": {"link_servers": ["B"], "relay_onwards": True},
        "B": {"relay_onwards": True},
        "C": {"link_servers": ["B"], "relay_onwards": True},
    }
    sets = await ministries_factory.get("abc-onward", ("A", "B", "C"), policy=onward)
    async for federation in _running(sets):
        yield federation
