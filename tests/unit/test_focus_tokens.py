"""The token service's request handling, status codes and error bodies (lk-jwt-service's), with fakes.

The OpenID check and the room membership are in-memory fakes here; the same service against a real
Synapse is in tests/integration/test_focus_tokens_synapse.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from visio_matrix.appservice.http import matrix_errors_middleware
from visio_matrix.clock import FakeClock
from visio_matrix.config.model import FocusConfig, PolicyConfig
from visio_matrix.focus.identity import hashed_identity, livekit_room_name
from visio_matrix.focus.jwt import verify_token
from visio_matrix.focus.openid import OpenIdError, OpenIdToken
from visio_matrix.focus.rooms import RoomBinding, RoomRegistry
from visio_matrix.focus.tokens import (
    FocusError,
    TokenRequest,
    TokenService,
    focus_routes,
    parse_legacy_request,
    parse_token_request,
)

SECRET = "k" * 40
FOCUS = FocusConfig(
    enabled=True,
    public_url="https://visio.example.org",
    livekit_url="wss://visio.example.org",
    api_key="visio",
    api_secret=SECRET,
    token_lifetime=3600,
    verify_federation_tls=True,
    homeserver_urls={},
)
POLICY = PolicyConfig(allowed_servers=("example.org", "partner.net"), open_call_servers=("example.org",))
OPENID = {
    "access_token": "tok-alice",
    "token_type": "Bearer",
    "matrix_server_name": "example.org",
    "expires_in": 3600,
}
ROOM = "!room:example.org"


def legacy_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"room": ROOM, "openid_token": dict(OPENID), "device_id": "DEVA"}
    body.update(changes)
    return body


def token_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "room_id": ROOM,
        "slot_id": "m.call#ROOM",
        "openid_token": dict(OPENID),
        "member": {"id": "member-1", "claimed_user_id": "@alice:example.org", "claimed_device_id": "DEVA"},
    }
    body.update(changes)
    return body


# -- parsing: Go's decoder + lk-jwt-service's Validate() ----------------------------------------------


def test_parse_valid_bodies() -> None:
    legacy = parse_legacy_request(json.dumps(legacy_body()).encode())
    assert legacy == TokenRequest(
        room_id=ROOM, slot_id="m.call#ROOM", openid=OpenIdToken("tok-alice", "example.org"), device_id="DEVA"
    )
    assert legacy.legacy
    token = parse_token_request(json.dumps(token_body()).encode())
    assert token == TokenRequest(
        room_id=ROOM,
        slot_id="m.call#ROOM",
        openid=OpenIdToken("tok-alice", "example.org"),
        device_id="DEVA",
        member_id="member-1",
        claimed_user_id="@alice:example.org",
    )


NOT_JSON = (400, "M_NOT_JSON", "Error reading request")


def _with_openid(**changes: Any) -> dict[str, Any]:
    return {**OPENID, **changes}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", NOT_JSON),
        (b"{", NOT_JSON),
        (b"[]", NOT_JSON),
        (b'"room"', NOT_JSON),
        (json.dumps(legacy_body(extra=1)).encode(), NOT_JSON),
        (json.dumps(legacy_body(room=5)).encode(), NOT_JSON),
        (json.dumps(legacy_body(openid_token="x")).encode(), NOT_JSON),
        (json.dumps(legacy_body(openid_token=_with_openid(expires_in="3600"))).encode(), NOT_JSON),
        (json.dumps(legacy_body(openid_token=_with_openid(expires_in=1.5))).encode(), NOT_JSON),
        (json.dumps(legacy_body(openid_token=_with_openid(surprise=True))).encode(), NOT_JSON),
        (json.dumps(legacy_body(delay_timeout="10")).encode(), NOT_JSON),
        (b"null", (400, "M_BAD_JSON", "Missing room parameter")),
        (json.dumps(legacy_body(room="")).encode(), (400, "M_BAD_JSON", "Missing room parameter")),
        (json.dumps(legacy_body(room=None)).encode(), (400, "M_BAD_JSON", "Missing room parameter")),
        (
            json.dumps(legacy_body(openid_token=None)).encode(),
            (400, "M_BAD_JSON", "Missing OpenID token parameters"),
        ),
        (
            json.dumps(legacy_body(openid_token=_with_openid(matrix_server_name=""))).encode(),
            (400, "M_BAD_JSON", "Missing OpenID token parameters"),
        ),
        (
            json.dumps(legacy_body(delay_id="d1")).encode(),
            (400, "M_BAD_JSON", "The request body is missing `delay_id` or `delay_timeout`"),
        ),
        (
            json.dumps(legacy_body(delay_timeout=1000)).encode(),
            (400, "M_BAD_JSON", "The request body is missing `delay_id` or `delay_timeout`"),
        ),
        (json.dumps(legacy_body(device_id="")).encode(), (400, "M_BAD_JSON", "Missing device_id parameter")),
    ],
)
def test_legacy_refusals(body: bytes, expected: tuple[int, str, str]) -> None:
    with pytest.raises(FocusError) as info:
        parse_legacy_request(body)
    assert (info.value.status, info.value.errcode, info.value.error) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"room_id": ""}, "The request body is missing `room_id` or `slot_id`"),
        ({"slot_id": None}, "The request body is missing `room_id` or `slot_id`"),
        (
            {"member": {"id": "m", "claimed_user_id": "@a:x"}},
            "The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`",
        ),
        (
            {"member": None},
            "The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`",
        ),
        (
            {"openid_token": _with_openid(access_token="")},
            "The request body `openid_token` is missing a `access_token` or `matrix_server_name`",
        ),
        ({"delay_id": "d"}, "The request body is missing `delay_id` or `delay_timeout`"),
    ],
)
def test_get_token_refusals(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(FocusError) as info:
        parse_token_request(json.dumps(token_body(**changes)).encode())
    assert (info.value.status, info.value.errcode, info.value.error) == (400, "M_BAD_JSON", message)


@pytest.mark.parametrize(
    "changes",
    [{"room": "x"}, {"member": {"id": "m", "claimed_user_id": "@a:x", "claimed_device_id": "D", "x": 1}}],
)
def test_get_token_unknown_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(FocusError) as info:
        parse_token_request(json.dumps(token_body(**changes)).encode())
    assert (info.value.status, info.value.errcode) == (400, "M_NOT_JSON")


def test_go_decoder_quirks() -> None:
    # Trailing data after the first JSON value is ignored, like json.Decoder.Decode.
    parse_legacy_request(json.dumps(legacy_body()).encode() + b" garbage")
    # delay_cs_api_url alone is accepted and ignored; both delay fields ask for delegation.
    assert not parse_token_request(
        json.dumps(token_body(delay_cs_api_url="https://hs")).encode()
    ).delegation_requested
    both = parse_token_request(json.dumps(token_body(delay_id="d", delay_timeout=1000)).encode())
    assert both.delegation_requested


# -- the service over HTTP ---------------------------------------------------------------------------


class FakeVerifier:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.calls: list[OpenIdToken] = []

    async def user_id(self, token: OpenIdToken) -> str:
        self.calls.append(token)
        if token.access_token not in self.users:
            raise OpenIdError("refused (HTTP 401)")
        return self.users[token.access_token]

    async def close(self) -> None:
        pass


class FakeMembership:
    def __init__(self, joined: set[tuple[str, str]]) -> None:
        self.joined = joined

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return (room_id, user_id) in self.joined


class MemoryState:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writes = 0

    async def get_state(self, key: str) -> str | None:
        return self.values.get(key)

    async def set_state(self, key: str, value: str) -> None:
        self.writes += 1
        self.values[key] = value


MakeClient = Callable[..., Any]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_wall_ms=1_800_000_000_000)


@pytest.fixture
def verifier() -> FakeVerifier:
    return FakeVerifier(
        {"tok-alice": "@alice:example.org", "tok-pat": "@pat:partner.net", "tok-eve": "@eve:evil.org"}
    )


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
async def client(
    aiohttp_client: MakeClient, clock: FakeClock, verifier: FakeVerifier, state: MemoryState
) -> TestClient:
    membership = FakeMembership({(ROOM, "@alice:example.org"), (ROOM, "@pat:partner.net")})
    service = TokenService(
        focus=FOCUS,
        policy=POLICY,
        verifier=verifier,
        membership=membership,
        clock=clock,
        rooms=RoomRegistry(state),
    )
    app = web.Application(middlewares=[matrix_errors_middleware])
    app.add_routes(focus_routes(service))
    result: TestClient = await aiohttp_client(app)
    return result


CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token",
    "Content-Type": "application/json",
}


def assert_cors(headers: Any) -> None:
    for name, value in CORS.items():
        assert headers.get(name) == value, name


async def test_get_token_issues_a_verifiable_token(
    client: TestClient, clock: FakeClock, state: MemoryState
) -> None:
    response = await client.post("/get_token", json=token_body())
    assert response.status == 200
    assert_cors(response.headers)
    body = await response.json()
    assert set(body) == {"url", "jwt"} and body["url"] == "wss://visio.example.org"
    claims = verify_token(body["jwt"], {"visio": SECRET}, clock.wall_ms() / 1000)
    assert claims.identity == hashed_identity("@alice:example.org", "DEVA", "member-1")
    assert claims.grants.room == livekit_room_name(ROOM, "m.call#ROOM")
    assert (claims.visio.user_id, claims.visio.device_id, claims.visio.room_id, claims.visio.can_open) == (
        "@alice:example.org",
        "DEVA",
        ROOM,
        True,
    )
    assert claims.expires_at - claims.not_before == 3600
    assert await RoomRegistry(state).lookup(claims.grants.room) == RoomBinding(ROOM, "m.call#ROOM")


async def test_sfu_get_issues_the_legacy_identity(
    client: TestClient, clock: FakeClock, state: MemoryState
) -> None:
    response = await client.post("/sfu/get", json=legacy_body())
    assert response.status == 200
    claims = verify_token((await response.json())["jwt"], {"visio": SECRET}, clock.wall_ms() / 1000)
    assert claims.identity == "@alice:example.org:DEVA"
    assert claims.grants.room == livekit_room_name(ROOM, "m.call#ROOM")
    # Both endpoints name the same LiveKit room: the registry was written once.
    await client.post("/get_token", json=token_body())
    assert state.writes == 1


async def test_other_allowed_server_gets_a_join_only_token(client: TestClient, clock: FakeClock) -> None:
    openid = _with_openid(access_token="tok-pat", matrix_server_name="partner.net")
    member = {"id": "m2", "claimed_user_id": "@pat:partner.net", "claimed_device_id": "P"}
    response = await client.post("/get_token", json=token_body(openid_token=openid, member=member))
    assert response.status == 200
    claims = verify_token((await response.json())["jwt"], {"visio": SECRET}, clock.wall_ms() / 1000)
    assert claims.visio.can_open is False


@pytest.mark.parametrize(
    ("path", "body", "status", "errcode"),
    [
        ("/get_token", token_body(openid_token=_with_openid(access_token="nope")), 401, "M_UNAUTHORIZED"),
        ("/sfu/get", legacy_body(openid_token=_with_openid(access_token="nope")), 401, "M_UNAUTHORIZED"),
        # A valid token of one user presented as another's.
        (
            "/get_token",
            token_body(member={"id": "m", "claimed_user_id": "@bob:example.org", "claimed_device_id": "D"}),
            401,
            "M_UNAUTHORIZED",
        ),
        # Server not in policy.allowed_servers.
        (
            "/get_token",
            token_body(openid_token=_with_openid(access_token="tok-eve", matrix_server_name="evil.org")),
            403,
            "M_FORBIDDEN",
        ),
        # Not joined to the room.
        ("/sfu/get", legacy_body(room="!other:example.org"), 403, "M_FORBIDDEN"),
        # Delayed-leave delegation is not implemented: refused as lk-jwt-service refuses restricted users.
        ("/get_token", token_body(delay_id="d", delay_timeout=8000), 400, "M_BAD_JSON"),
        ("/sfu/get", legacy_body(delay_id="d", delay_timeout=8000), 400, "M_BAD_JSON"),
    ],
)
async def test_refusals(
    client: TestClient, path: str, body: dict[str, Any], status: int, errcode: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status == status
    assert_cors(response.headers)
    payload = await response.json()
    assert payload["errcode"] == errcode and payload["error"]
    if status == 401:
        assert payload == {"errcode": "M_UNAUTHORIZED", "error": "The request could not be authorised."}


async def test_disallowed_server_is_refused_before_asking_it(
    client: TestClient, verifier: FakeVerifier
) -> None:
    openid = _with_openid(access_token="tok-eve", matrix_server_name="evil.org")
    response = await client.post("/get_token", json=token_body(openid_token=openid))
    assert response.status == 403
    assert verifier.calls == []


async def test_malformed_body_over_http(client: TestClient) -> None:
    response = await client.post("/get_token", data=b"{not json")
    assert response.status == 400
    assert await response.json() == {"errcode": "M_NOT_JSON", "error": "Error reading request"}


@pytest.mark.parametrize("path", ["/sfu/get", "/get_token", "/delegate_delayed_leave"])
async def test_cors_preflight(client: TestClient, path: str) -> None:
    response = await client.options(
        path, headers={"Origin": "https://call.example.org", "Access-Control-Request-Method": "POST"}
    )
    assert response.status == 200
    assert_cors(response.headers)
    assert await response.read() == b""


@pytest.mark.parametrize("path", ["/sfu/get", "/get_token"])
async def test_other_methods_are_405(client: TestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status == 405
    assert_cors(response.headers)


async def test_delegate_delayed_leave_is_404(client: TestClient) -> None:
    response = await client.post("/delegate_delayed_leave", json={})
    assert response.status == 404
    assert_cors(response.headers)
    assert (await response.json())["errcode"] == "M_UNRECOGNIZED"


async def test_membership_checker_failure_is_a_500(aiohttp_client: MakeClient, clock: FakeClock) -> None:
    class Broken:
        async def is_joined(self, room_id: str, user_id: str) -> bool:
            raise RuntimeError("no view of the room")

    service = TokenService(
        focus=FOCUS,
        policy=POLICY,
        verifier=FakeVerifier({"tok-alice": "@alice:example.org"}),
        membership=Broken(),
        clock=clock,
    )
    app = web.Application()
    app.add_routes(focus_routes(service))
    client = await aiohttp_client(app)
    response = await client.post("/get_token", json=token_body())
    assert response.status == 500
    assert await response.json() == {"errcode": "M_UNKNOWN", "error": "Internal Server Error"}
