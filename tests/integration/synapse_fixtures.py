"""Pytest fixtures for real Synapse homeservers (import them from a conftest).

`synapse_factory` (session scope) starts `LocalSynapse` instances in one temporary folder per test
session and stops every one of them when the session ends. `synapse` is the session's shared
homeserver, started on first use: tests share it and keep apart by using fresh user names.
The homeserver processes are independent of event loops, so function-scoped async tests can share them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from visio_matrix.devstack.synapse import LocalSynapse, free_port


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
