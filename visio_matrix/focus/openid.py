"""Who an OpenID token belongs to, asked of the user's own homeserver over the federation API.

``GET <base>/_matrix/federation/v1/openid/userinfo?access_token=...`` answers ``{"sub": "@user:server"}``
for a valid token. ``<base>`` is, in order: an override from the configuration
(``focus.homeserver_urls``, plus the local homeserver at ``homeserver.url``); ``https://<name>``
when the server name is an IP literal (port 8448 unless given) or carries a port; the delegated
``m.server`` of ``https://<name>/.well-known/matrix/server`` (port 8448 unless given); else
``https://<name>:8448``. SRV records are not looked up (a server that relies on them needs an
override). Delegations are cached for an hour, failures for a minute.

As in gomatrixserverlib's ``LookupUserInfo`` (which lk-jwt-service uses), the answer must name a
user *of that server*: a homeserver cannot vouch for users of another one. The access token is a
bearer credential: it never appears in logs or error messages.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp

from visio_matrix.clock import Clock

log = logging.getLogger(__name__)

USERINFO_PATH = "/_matrix/federation/v1/openid/userinfo"
WELL_KNOWN_PATH = "/.well-known/matrix/server"
DEFAULT_FEDERATION_PORT = 8448
TIMEOUT_S = 5.0
DELEGATION_TTL_S = 3600.0
FAILURE_TTL_S = 60.0
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class OpenIdToken:
    """The ``openid_token`` a client sends (from ``POST /_matrix/client/v3/user/{userId}/openid/request_token``)."""

    access_token: str
    matrix_server_name: str


class OpenIdError(Exception):
    """The token could not be checked, or the homeserver does not vouch for it; says which."""


class OpenIdVerifier(Protocol):
    async def user_id(self, token: OpenIdToken) -> str:
        """The Matrix user the token belongs to; raises ``OpenIdError``."""
        ...

    async def close(self) -> None: ...


def split_host_port(server_name: str) -> tuple[str, int | None]:
    """``example.org:8448`` -> ``("example.org", 8448)``; ``[::1]`` -> ``("[::1]", None)``."""
    if server_name.startswith("["):
        end = server_name.find("]")
        rest = server_name[end + 1 :]
        return server_name[: end + 1], int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if ":" in server_name:
        host, port = server_name.rsplit(":", 1)
        return host, int(port) if port.isdigit() else None
    return server_name, None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def direct_base_url(server_name: str) -> str | None:
    """The base URL when the server name alone decides it (IP literal or explicit port), else None."""
    host, port = split_host_port(server_name)
    if port is not None:
        return f"https://{host}:{port}"
    if is_ip_literal(host):
        return f"https://{host}:{DEFAULT_FEDERATION_PORT}"
    return None


def delegated_base_url(m_server: object) -> str:
    """The base URL for a ``.well-known/matrix/server`` ``m.server`` value; ``ValueError`` if unusable."""
    if not isinstance(m_server, str) or not m_server or any(c in m_server for c in "/?#@ \t"):
        raise ValueError(f"m.server is not a host[:port]: {str(m_server)[:80]!r}")
    host, port = split_host_port(m_server)
    if not host:
        raise ValueError("m.server has no host")
    return f"https://{host}:{port if port is not None else DEFAULT_FEDERATION_PORT}"


def check_userinfo(body: object, server_name: str) -> str:
    """The ``sub`` of a userinfo answer, if it is a user of ``server_name``; ``OpenIdError`` otherwise."""
    sub = body.get("sub") if isinstance(body, Mapping) else None
    if not isinstance(sub, str) or not sub.startswith("@") or ":" not in sub:
        raise OpenIdError("the homeserver's userinfo answer has no valid 'sub' user ID")
    if sub.split(":", 1)[1] != server_name:
        raise OpenIdError(f"{server_name} answered for {sub}, a user of another server")
    return sub


class FederationOpenIdVerifier:
    """Checks OpenID tokens with the homeserver that issued them. Owns one HTTP session."""

    def __init__(
        self,
        clock: Clock,
        overrides: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._clock = clock
        self._overrides = {name: url.rstrip("/") for name, url in (overrides or {}).items()}
        self._ssl: ssl.SSLContext | bool = True if verify_tls else False
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # server name -> (base URL or None for "discovery failed", valid until clock.now()).
        self._delegations: dict[str, tuple[str | None, float]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def base_url(self, server_name: str) -> str:
        """Where ``server_name``'s federation API (the userinfo endpoint) is."""
        if server_name in self._overrides:
            return self._overrides[server_name]
        direct = direct_base_url(server_name)
        if direct is not None:
            return direct
        cached = self._delegations.get(server_name)
        if cached is not None and cached[1] > self._clock.now():
            return cached[0] or f"https://{server_name}:{DEFAULT_FEDERATION_PORT}"
        delegated = await self._well_known(server_name)
        ttl = DELEGATION_TTL_S if delegated is not None else FAILURE_TTL_S
        self._delegations[server_name] = (delegated, self._clock.now() + ttl)
        return delegated or f"https://{server_name}:{DEFAULT_FEDERATION_PORT}"

    async def _well_known(self, server_name: str) -> str | None:
        url = f"https://{server_name}{WELL_KNOWN_PATH}"
        try:
            async with self._http().get(url, ssl=self._ssl) as response:
                if response.status != 200:
                    log.debug("no delegation for %s: %s answered HTTP %d", server_name, url, response.status)
                    return None
                body = json.loads(await _read_limited(response))
            return delegated_base_url(body.get("m.server") if isinstance(body, dict) else None)
        except (aiohttp.ClientError, TimeoutError, ValueError, OpenIdError) as exc:
            log.debug("no delegation for %s (%s: %s)", server_name, type(exc).__name__, exc)
            return None

    async def user_id(self, token: OpenIdToken) -> str:
        server = token.matrix_server_name
        base = await self.base_url(server)
        url = f"{base}{USERINFO_PATH}?access_token={quote(token.access_token, safe='')}"
        try:
            # No redirects: the token goes to the server's own endpoint only.
            async with self._http().get(url, ssl=self._ssl, allow_redirects=False) as response:
                raw = await _read_limited(response)
                if response.status != 200:
                    raise OpenIdError(f"{server} refused the OpenID token (HTTP {response.status})")
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise OpenIdError(f"{server} answered userinfo with invalid JSON") from None
        except TimeoutError:
            raise OpenIdError(f"{server} did not answer within {self._timeout.total:.0f}s ({base})") from None
        except aiohttp.ClientError as exc:
            raise OpenIdError(
                f"cannot reach {server} at {base}: {_redact(str(exc) or type(exc).__name__, token)}"
            ) from None
        return check_userinfo(body, server)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    data = bytearray()
    async for chunk in response.content.iter_chunked(8192):
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            raise OpenIdError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
    return bytes(data)


def _redact(text: str, token: OpenIdToken) -> str:
    for secret in {token.access_token, quote(token.access_token, safe="")}:
        if secret:
            text = text.replace(secret, "***")
    return text
