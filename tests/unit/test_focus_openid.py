"""OpenID token checks: server discovery rules, and the userinfo call against a local HTTP server.

The local server plays a homeserver's userinfo endpoint (good answers, refusals, garbage, silence);
the real Synapse exchange is in tests/integration/test_focus_tokens_synapse.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from visio_matrix.clock import FakeClock
from visio_matrix.focus.openid import (
    FederationOpenIdVerifier,
    OpenIdError,
    OpenIdToken,
    check_userinfo,
    delegated_base_url,
    direct_base_url,
)

TOKEN = "s3cr3t/tok en+=?"


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("example.org", None),
        ("example.org:8448", "https://example.org:8448"),
        ("example.org:443", "https://example.org:443"),
        ("192.0.2.1", "https://192.0.2.1:8448"),
        ("192.0.2.1:8008", "https://192.0.2.1:8008"),
        ("[2001:db8::1]", "https://[2001:db8::1]:8448"),
        ("[2001:db8::1]:9000", "https://[2001:db8::1]:9000"),
    ],
)
def test_direct_base_url(server_name: str, expected: str | None) -> None:
    assert direct_base_url(server_name) == expected


@pytest.mark.parametrize(
    ("m_server", "expected"),
    [
        ("matrix.example.org", "https://matrix.example.org:8448"),
        ("matrix.example.org:443", "https://matrix.example.org:443"),
        ("[2001:db8::1]:8448", "https://[2001:db8::1]:8448"),
    ],
)
def test_delegation(m_server: str, expected: str) -> None:
    assert delegated_base_url(m_server) == expected


@pytest.mark.parametrize("m_server", [None, "", 5, "https://x.org", "x.org/path", "user@x.org", "a b"])
def test_bad_delegation(m_server: object) -> None:
    with pytest.raises(ValueError):
        delegated_base_url(m_server)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "no valid 'sub'"),
        ({"sub": 5}, "no valid 'sub'"),
        ({"sub": "alice"}, "no valid 'sub'"),
        ([], "no valid 'sub'"),
        ({"sub": "@alice:other.org"}, "a user of another server"),
        # The server part must be the whole rest, as gomatrixserverlib compares it.
        ({"sub": "@alice:example.org:8448"}, "a user of another server"),
    ],
)
def test_userinfo_answers_are_checked(body: object, error: str) -> None:
    with pytest.raises(OpenIdError, match=error):
        check_userinfo(body, "example.org")
    assert check_userinfo({"sub": "@alice:example.org"}, "example.org") == "@alice:example.org"


class CountingVerifier(FederationOpenIdVerifier):
    """Discovery with a scripted .well-known answer (no real DNS/HTTPS on port 443 in tests)."""

    def __init__(self, clock: FakeClock, answers: dict[str, str | None]) -> None:
        super().__init__(clock)
        self.answers = answers
        self.lookups: list[str] = []

    async def _well_known(self, server_name: str) -> str | None:
        self.lookups.append(server_name)
        return self.answers.get(server_name)


async def test_delegations_are_cached() -> None:
    clock = FakeClock()
    verifier = CountingVerifier(clock, {"example.org": "https://matrix.example.org:8448"})
    assert await verifier.base_url("example.org") == "https://matrix.example.org:8448"
    assert await verifier.base_url("example.org") == "https://matrix.example.org:8448"
    assert verifier.lookups == ["example.org"]
    clock.advance(3601)
    await verifier.base_url("example.org")
    assert verifier.lookups == ["example.org", "example.org"]
    # No delegation: port 8448, asked again after a minute only.
    assert await verifier.base_url("plain.org") == "https://plain.org:8448"
    await verifier.base_url("plain.org")
    assert verifier.lookups.count("plain.org") == 1
    clock.advance(61)
    await verifier.base_url("plain.org")
    assert verifier.lookups.count("plain.org") == 2
    # A port in the server name, or an override, needs no discovery.
    assert await verifier.base_url("ported.org:8000") == "https://ported.org:8000"
    assert "ported.org:8000" not in verifier.lookups


MakeServer = Callable[..., Any]


@pytest.fixture
async def homeserver(aiohttp_server: MakeServer) -> tuple[TestServer, dict[str, Any]]:
    """A userinfo endpoint whose behaviour each test picks through ``mode``."""
    control: dict[str, Any] = {"mode": "ok", "seen": []}

    async def userinfo(request: web.Request) -> web.StreamResponse:
        control["seen"].append(request.query.get("access_token"))
        mode = control["mode"]
        if mode == "ok":
            return web.json_response({"sub": "@alice:hs.test"})
        if mode == "other-user":
            return web.json_response({"sub": "@alice:elsewhere.test"})
        if mode == "refuse":
            return web.json_response(
                {"errcode": "M_UNKNOWN_TOKEN", "error": "Access token unknown or expired"}, status=401
            )
        if mode == "garbage":
            return web.Response(body=b"<html>", content_type="text/html")
        if mode == "huge":
            return web.Response(body=b'{"sub": "' + b"a" * 200_000 + b'"}', content_type="application/json")
        if mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if mode == "slow":
            await asyncio.sleep(5)
        return web.json_response({"sub": "@alice:hs.test"})

    app = web.Application()
    app.router.add_get("/_matrix/federation/v1/openid/userinfo", userinfo)
    server: TestServer = await aiohttp_server(app)
    return server, control


def verifier_for(server: TestServer, timeout_s: float = 5) -> FederationOpenIdVerifier:
    return FederationOpenIdVerifier(
        FakeClock(), {"hs.test": str(server.make_url("")).rstrip("/")}, timeout_s=timeout_s
    )


async def test_userinfo_ok_and_token_sent_intact(homeserver: tuple[TestServer, dict[str, Any]]) -> None:
    server, control = homeserver
    verifier = verifier_for(server)
    try:
        assert await verifier.user_id(OpenIdToken(TOKEN, "hs.test")) == "@alice:hs.test"
    finally:
        await verifier.close()
    assert control["seen"] == [TOKEN]


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("other-user", "hs.test answered for @alice:elsewhere.test, a user of another server"),
        ("refuse", r"hs.test refused the OpenID token \(HTTP 401\)"),
        ("garbage", "invalid JSON"),
        ("huge", "larger than"),
        ("redirect", "HTTP 302"),
        ("slow", "did not answer within"),
    ],
)
async def test_userinfo_problems(
    homeserver: tuple[TestServer, dict[str, Any]], mode: str, error: str
) -> None:
    server, control = homeserver
    control["mode"] = mode
    verifier = verifier_for(server, timeout_s=0.5)
    try:
        with pytest.raises(OpenIdError, match=error) as info:
            await verifier.user_id(OpenIdToken(TOKEN, "hs.test"))
    finally:
        await verifier.close()
    assert TOKEN not in str(info.value)


async def test_unreachable_homeserver() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    verifier = FederationOpenIdVerifier(FakeClock(), {"hs.test": f"http://127.0.0.1:{port}"})
    try:
        with pytest.raises(OpenIdError, match=r"cannot reach hs\.test") as info:
            await verifier.user_id(OpenIdToken(TOKEN, "hs.test"))
    finally:
        await verifier.close()
    assert TOKEN not in str(info.value)
    assert "s3cr3t" not in str(info.value)
