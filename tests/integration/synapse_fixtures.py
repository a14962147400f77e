"""Pytest fixtures for real Synapse homeservers (import them from a conftest).

`synapse_factory` (session scope) starts `LocalSynapse` instances in one temporary folder per test
session and stops every one of them when the session ends. `synapse` is the session's shared
homeserver, started on first use: tests share it and keep apart by using fresh user names.
The homeserver processes are independent of event loops, so function-scoped async tests can share them.

`service_stack()` is "Synapse + our service": a homeserver of its own with our appservice
registration and the service's files, made once per session and name. A test module defines a
`stack` fixture returning its `service_stack(...)`; the `service` fixture here then runs a
`visio_matrix.app.Service` on that stack for each test that asks for it.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from visio_matrix.app import Service
from visio_matrix.config import Config, load_config
from visio_matrix.devstack.service_files import write_service_files
from visio_matrix.devstack.synapse import LocalSynapse, free_port
from visio_matrix.devstack.user import MatrixUser

PASSWORD = "correct horse battery staple"


class SynapseFactory:
    """Starts homeservers under `root`; `close()` stops them all (blocking, for fixture teardown)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._servers: list[LocalSynapse] = []
        self._shared: LocalSynapse | None = None
        self._names = itertools.count(1)

    async def start(self, federation: bool = False, **kwargs: Any) -> LocalSynapse:
        """A new running homeserver; `federation=True` adds a TLS federation listener (and names
        the server `localhost:<federation port>`). Other arguments go to `LocalSynapse`."""
        if federation:
            kwargs.setdefault("federation_port", free_port())
        server = LocalSynapse(self.root / f"hs{next(self._names)}", **kwargs)
        self._servers.append(server)
        await server.start()
        return server

    async def shared(self) -> LocalSynapse:
        """The session's shared homeserver (no federation listener), started on first use."""
        if self._shared is None or not self._shared.running:
            self._shared = await self.start()
        return self._shared

    def close(self) -> None:
        for server in self._servers:
            server.terminate()
        self._servers.clear()


@pytest.fixture(scope="session")
def synapse_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseFactory]:
    factory = SynapseFactory(tmp_path_factory.mktemp("synapse"))
    try:
        yield factory
    finally:
        factory.close()


@pytest_asyncio.fixture
async def synapse(synapse_factory: SynapseFactory) -> LocalSynapse:
    return await synapse_factory.shared()


@dataclass
class ServiceStack:
    """A homeserver with our appservice registered, and the service's files (config, keys) in `workdir`."""

    hs: LocalSynapse
    config_path: Path
    workdir: Path

    def config(self) -> Config:
        return load_config(self.config_path)[0]

    def service(self) -> Service:
        """A new, not yet started service on this stack (its state survives restarts: same files)."""
        return Service(self.config())

    async def register(self, prefix: str) -> str:
        """A fresh user (``prefix`` + random suffix) with password `PASSWORD`; returns its user id."""
        return await self.hs.register_user(f"{prefix}{uuid.uuid4().hex[:6]}", PASSWORD)

    async def new_user(self, prefix: str) -> MatrixUser:
        """A fresh user, logged in on a new E2EE device (close it when done)."""
        user_id = await self.register(prefix)
        return await MatrixUser.login(self.hs.base_url, user_id, PASSWORD, self.workdir / "users" / user_id)


_stacks: dict[str, tuple[ServiceStack, dict[str, Any]]] = {}


async def service_stack(
    synapse_factory: SynapseFactory,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    advertise_focus: bool = False,
    **service_overrides: Any,
) -> ServiceStack:
    """The session's stack called `name`, made on first use (again if its homeserver stopped).

    `service_overrides` go to the service's generated config (`write_service_files`), e.g.
    ``stop_power_level=50``; `advertise_focus` makes the homeserver advertise the service as
    MatrixRTC focus. One name is one set of options.
    """
    options = {"advertise_focus": advertise_focus, **service_overrides}
    cached = _stacks.get(name)
    if cached is not None:
        stack, cached_options = cached
        if cached_options != options:
            raise ValueError(f"service stack {name!r} already made with other options: {cached_options}")
        if stack.hs.running:
            return stack
    workdir = tmp_path_factory.mktemp(name)
    client_port, service_port = free_port(), free_port()
    config_path, registration = write_service_files(
        workdir,
        homeserver_url=f"http://127.0.0.1:{client_port}",
        server_name=f"localhost:{client_port}",
        port=service_port,
        **service_overrides,
    )
    hs = await synapse_factory.start(
        client_port=client_port,
        appservice_registration_files=[registration],
        rtc_focus_url=f"http://127.0.0.1:{service_port}" if advertise_focus else None,
    )
    stack = ServiceStack(hs, config_path, workdir)
    _stacks[name] = (stack, options)
    return stack


@pytest_asyncio.fixture
async def service(stack: ServiceStack) -> AsyncIterator[Service]:
    """The service running on the test module's `stack` for one test, stopped afterwards."""
    svc = stack.service()
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
