"""Fixtures for the relay suite: a relay bound to 127.0.0.1 on a private port range."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from visio_matrix.clock import SystemClock
from visio_matrix.relay import Relay, RelayOptions


def open_udp_sockets() -> int:
    """UDP sockets this process holds (from /proc/net/udp inodes matched to our fds)."""
    inodes = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    if line.split()[9] in inodes:
                        count += 1
        except FileNotFoundError:
            continue
    return count


def relay_options(**overrides: object) -> RelayOptions:
    base: dict[str, object] = dict(host_addresses=("127.0.0.1",), udp_port_min=42000, udp_port_max=42999)
    base.update(overrides)
    return RelayOptions(**base)  # type: ignore[arg-type]


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = Relay(relay_options(), SystemClock())
    yield r
    await r.close()
