"""The appservice HTTP API in-process (aiohttp test client) with an in-memory handler."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from visio_matrix.appservice.events import Transaction
from visio_matrix.appservice.http import build_routes, matrix_errors_middleware

TOKEN = "hs-token-0123456789abcdef"


class RecordingHandler:
    def __init__(self) -> None:
        self.transactions: list[tuple[str, Transaction]] = []
        self.pings: list[str | None] = []

    async def on_transaction(self, txn_id: str, txn: Transaction) -> None:
        self.transactions.append((txn_id, txn))

    async def user_exists(self, user_id: str) -> bool:
        return user_id == "@visio:hs"

    async def alias_exists(self, alias: str) -> bool:
        return False

    async def on_ping(self, transaction_id: str | None) -> None:
        self.pings.append(transaction_id)


@pytest.fixture
async def setup(aiohttp_client: Any) -> tuple[TestClient[Any, Any], RecordingHandler]:
    handler = RecordingHandler()
    app = web.Application(middlewares=[matrix_errors_middleware])
    app.add_routes(build_routes(handler, TOKEN))
    return await aiohttp_client(app), handler


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_transaction_accepted(setup: tuple[TestClient[Any, Any], RecordingHandler]) -> None:
    client, handler = setup
    resp = await client.put("/_matrix/app/v1/transactions/t1", json={"events": []}, headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {}
    assert [t for t, _ in handler.transactions] == ["t1"]


@pytest.mark.parametrize(
    ("headers", "status", "errcode"),
    [
        ({}, 401, "M_UNAUTHORIZED"),
        ({"Authorization": "Bearer wrong"}, 403, "M_FORBIDDEN"),
        ({"Authorization": "Basic abc"}, 401, "M_UNAUTHORIZED"),
    ],
)
async def test_auth_errors(
    setup: tuple[TestClient[Any, Any], RecordingHandler], headers: dict[str, str], status: int, errcode: str
) -> None:
    client, handler = setup
    for method, path in [
        ("PUT", "/_matrix/app/v1/transactions/t1"),
        ("GET", "/_matrix/app/v1/users/@visio:hs"),
        ("GET", "/_matrix/app/v1/rooms/%23a:hs"),
        ("POST", "/_matrix/app/v1/ping"),
    ]:
        resp = await client.request(method, path, json={"events": []}, headers=headers)
        assert resp.status == status, path
        assert (await resp.json())["errcode"] == errcode
    assert handler.transactions == []


async def test_legacy_query_token(setup: tuple[TestClient[Any, Any], RecordingHandler]) -> None:
    client, _ = setup
    resp = await client.get(f"/_matrix/app/v1/users/@visio:hs?access_token={TOKEN}")
    assert resp.status == 200


@pytest.mark.parametrize(
    ("data", "errcode"),
    [
        (b"{not json", "M_NOT_JSON"),
        (b"[]", "M_BAD_JSON"),
        (b'{"events": 3}', "M_BAD_JSON"),
        (b"", "M_BAD_JSON"),
    ],
)
async def test_bad_bodies(
    setup: tuple[TestClient[Any, Any], RecordingHandler], data: bytes, errcode: str
) -> None:
    client, handler = setup
    resp = await client.put("/_matrix/app/v1/transactions/t2", data=data, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["errcode"] == errcode
    assert handler.transactions == []


async def test_users_rooms_ping_and_unknown(setup: tuple[TestClient[Any, Any], RecordingHandler]) -> None:
    client, handler = setup
    assert (await client.get("/_matrix/app/v1/users/@visio:hs", headers=AUTH)).status == 200
    resp = await client.get("/_matrix/app/v1/users/@other:hs", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"
    assert (await client.get("/_matrix/app/v1/rooms/%23x:hs", headers=AUTH)).status == 404
    resp = await client.post("/_matrix/app/v1/ping", json={"transaction_id": "p1"}, headers=AUTH)
    assert resp.status == 200
    assert handler.pings == ["p1"]
    resp = await client.get("/_matrix/app/v1/nothing", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    resp = await client.delete("/_matrix/app/v1/transactions/t1", headers=AUTH)
    assert resp.status == 405
    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
