"""Matrix names as the configuration accepts them: server names (``host[:port]``) and user IDs."""

from __future__ import annotations

import ipaddress
import re

_DNS_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_LOCALPART = re.compile(r"[a-z0-9._=/+-]+")


def is_hostname(text: str) -> bool:
    if len(text) > 255:
        return False
    if text.startswith("[") and text.endswith("]"):
        try:
            return isinstance(ipaddress.ip_address(text[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            return False
    return _DNS_NAME.fullmatch(text) is not None


def server_name_problem(text: str) -> str | None:
    """Why ``text`` is not a Matrix server name (``host[:port]``), or None when it is one."""
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end != -1 else ""
        if end == -1 or (rest and not rest.startswith(":")):
            return "an IPv6 address must be written [address] or [address]:port"
        host, port = text[: end + 1], (rest[1:] if rest else None)
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if port is not None and (not port.isdigit() or not 1 <= int(port) <= 65535):
        return "a port after ':' must be a number 1-65535"
    if not is_hostname(host):
        return "expected a host name, IPv4 address or [IPv6] address, optionally with :port"
    return None


def user_id_problem(text: str) -> str | None:
    """Why ``text`` is not a Matrix user ID (``@localpart:server_name``), or None when it is one."""
    if not text.startswith("@") or ":" not in text:
        return "expected a Matrix user ID such as @visio:example.org"
    localpart, server = text[1:].split(":", 1)
    if not _LOCALPART.fullmatch(localpart):
        return "the localpart may only hold lower-case letters, digits and . _ = - / +"
    return server_name_problem(server)
