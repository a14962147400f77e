"""Make aiortc (through aioice) offer only a given loopback address as its host candidate.

aioice gathers host candidates on every interface address except 127.0.0.1; the bench keeps all
traffic on loopback (127.0.0.1, or 127.0.0.2 on a veth for Janus), so each bench process replaces
aioice's address list with exactly one address.
"""

from __future__ import annotations

import aioice.ice


def use_host_address(address: str) -> None:
    """Patch aioice's host address list for this process (aioice 0.10: ``ice.get_host_addresses``)."""

    def only_address(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [address] if use_ipv4 else []

    aioice.ice.get_host_addresses = only_address
