"""The homeserver -> service HTTP API (``/_matrix/app/v1``), per the application service spec.

This module only does HTTP: authentication with the ``hs_token``, body validation, status codes
and Matrix error bodies. What a transaction means is decided by the ``AppserviceHandler`` it is
given (see ``transactions.TransactionProcessor``).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from visio_matrix.appservice.events import BodyError, Transaction, parse_transaction_body

log = logging.getLogger(__name__)

PREFIX = "/_matrix/app/v1"


class AppserviceHandler(Protocol):
    async def on_transaction(self, txn_id: str, txn: Transaction) -> None: ...

    async def user_exists(self, user_id: str) -> bool: ...

    async def alias_exists(self, alias: str) -> bool: ...

    async def on_ping(self, transaction_id: str | None) -> None: ...


def matrix_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


def _token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    # Deprecated by the spec, still sent by older homeservers.
    return request.query.get("access_token")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_routes(handler: AppserviceHandler, hs_token: str) -> list[web.RouteDef]:
    """The spec's routes, each wrapped in hs_token authentication."""
    expected = hs_token.encode()

    def authenticated(fn: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            token = _token_of(request)
            if token is None:
                return matrix_error(401, "M_UNAUTHORIZED", "missing hs_token")
            if not hmac.compare_digest(token.encode(), expected):
                log.warning("appservice request with a wrong hs_token from %s", request.remote)
                return matrix_error(403, "M_FORBIDDEN", "wrong hs_token")
            return await fn(request)

        return wrapper

    async def read_json(request: web.Request) -> object:
        try:
            raw = await request.read()
            return json.loads(raw) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BodyError("M_NOT_JSON", f"body is not valid JSON: {exc}") from exc

    async def put_transaction(request: web.Request) -> web.StreamResponse:
        txn_id = request.match_info["txn_id"]
        try:
            txn = parse_transaction_body(await read_json(request))
        except BodyError as exc:
            return matrix_error(400, exc.errcode, exc.message)
        await handler.on_transaction(txn_id, txn)
        return web.json_response({})

    async def get_user(request: web.Request) -> web.StreamResponse:
        if await handler.user_exists(request.match_info["user_id"]):
            return web.json_response({})
        return matrix_error(404, "M_NOT_FOUND", "no such user in this application service")

    async def get_room(request: web.Request) -> web.StreamResponse:
        if await handler.alias_exists(request.match_info["alias"]):
            return web.json_response({})
        return matrix_error(404, "M_NOT_FOUND", "no such room alias in this application service")

    async def post_ping(request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request)
        except BodyError as exc:
            return matrix_error(400, exc.errcode, exc.message)
        txn_id = body.get("transaction_id") if isinstance(body, dict) else None
        await handler.on_ping(txn_id if isinstance(txn_id, str) else None)
        return web.json_response({})

    return [
        web.put(PREFIX + "/transactions/{txn_id}", authenticated(put_transaction)),
        web.get(PREFIX + "/users/{user_id}", authenticated(get_user)),
        web.get(PREFIX + "/rooms/{alias}", authenticated(get_room)),
        web.post(PREFIX + "/ping", authenticated(post_ping)),
    ]


@web.middleware
async def matrix_errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes and methods get the spec's ``M_UNRECOGNIZED``; crashes a logged 500."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return matrix_error(404, "M_UNRECOGNIZED", "unrecognized request")
    except web.HTTPMethodNotAllowed:
        return matrix_error(405, "M_UNRECOGNIZED", "method not allowed")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error while handling %s %s", request.method, request.path)
        return matrix_error(500, "M_UNKNOWN", "internal error")
