"""The token service: lk-jwt-service's HTTP API, so that Element Call can join calls on this relay.

``POST /sfu/get`` (legacy) and ``POST /get_token`` (MSC4195) take the client's Matrix OpenID token,
check it with the user's homeserver, and answer ``{"url": <ws(s) URL>, "jwt": <LiveKit token>}``.
Bodies, identities, room names, status codes and error bodies follow lk-jwt-service (``handler.go``,
``requests.go``): unknown fields and wrong types are ``400 M_NOT_JSON "Error reading request"``,
missing fields ``400 M_BAD_JSON`` with its messages, a token the homeserver does not vouch for (or
for another user than ``member.claimed_user_id``) ``401 M_UNAUTHORIZED``. Both endpoints allow any
origin (CORS ``*``) and answer the ``OPTIONS`` preflight.

On top of lk-jwt-service, which lets any Matrix user through, this service refuses with
``403 M_FORBIDDEN`` users of servers outside ``policy.allowed_servers`` (checked before any request
leaves for that server) and users who are not joined to the room (``MembershipChecker``, the bot's
view of the room). ``/sfu/get`` also requires ``device_id`` (lk-jwt-service would issue the
identity ``@user:server:``). Delegation of the delayed leave event (``delay_id``/``delay_timeout``,
and ``POST /delegate_delayed_leave``) is not implemented: the token endpoints refuse it the way
lk-jwt-service refuses it to "restricted" users (``400 M_BAD_JSON``, on which Element Call retries
without it) and ``/delegate_delayed_leave`` answers 404, so clients keep refreshing their delayed
leave event themselves.

Whether the holder may cause the conference to be *created* (``policy.open_call_servers``,
lk-jwt-service's "full access") goes into the token (``io.visio.can_open``); the signaling side
enforces it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import hdrs, web

from visio_matrix.clock import Clock
from visio_matrix.config.model import Config, FocusConfig, PolicyConfig
from visio_matrix.focus.identity import LEGACY_SLOT_ID, hashed_identity, legacy_identity, livekit_room_name
from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token
from visio_matrix.focus.openid import FederationOpenIdVerifier, OpenIdError, OpenIdToken, OpenIdVerifier
from visio_matrix.focus.rooms import RoomRegistry, StateStore

log = logging.getLogger(__name__)

CORS_HEADERS: Mapping[str, str] = {
    "Content-Type": "application/json",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token",
}
UNAUTHORIZED = "The request could not be authorised."


class FocusError(Exception):
    """A refusal, answered as ``{"errcode", "error"}`` with ``status``."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.errcode = errcode
        self.error = error


def _not_json() -> FocusError:
    return FocusError(400, "M_NOT_JSON", "Error reading request")


def _bad_json(message: str) -> FocusError:
    return FocusError(400, "M_BAD_JSON", message)


class MembershipChecker(Protocol):
    async def is_joined(self, room_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is currently joined to ``room_id``."""
        ...


@dataclass(frozen=True)
class TokenRequest:
    """A valid request to either endpoint, reduced to what the service needs."""

    room_id: str
    slot_id: str
    openid: OpenIdToken
    device_id: str
    # /get_token only: the MatrixRTC member id and the user the client claims to be.
    member_id: str | None = None
    claimed_user_id: str | None = None
    delegation_requested: bool = False

    @property
    def legacy(self) -> bool:
        return self.member_id is None


# -- request bodies: Go's json.Decoder with DisallowUnknownFields into lk-jwt-service's structs -----

_OPENID_FIELDS = {"access_token": str, "token_type": str, "matrix_server_name": str, "expires_in": int}
_MEMBER_FIELDS = {"id": str, "claimed_user_id": str, "claimed_device_id": str}
_DELAY_FIELDS = {"delay_id": str, "delay_timeout": int, "delay_cs_api_url": str}
_LEGACY_FIELDS: dict[str, Any] = {
    "room": str,
    "openid_token": _OPENID_FIELDS,
    "device_id": str,
    **_DELAY_FIELDS,
}
_TOKEN_FIELDS: dict[str, Any] = {
    "room_id": str,
    "slot_id": str,
    "openid_token": _OPENID_FIELDS,
    "member": _MEMBER_FIELDS,
    **_DELAY_FIELDS,
}


def _decode(value: object, schema: Mapping[str, Any]) -> dict[str, Any]:
    """Go's decoding of ``value`` into a struct: ``null`` leaves zero values, unknown keys and wrong
    types fail. Absent or null strings come back as ``""``, ints as ``0``, structs as ``{}``."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _not_json()
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = schema.get(key)
        if kind is None:
            raise _not_json()
        if item is None:
            continue
        if isinstance(kind, dict):
            out[key] = _decode(item, kind)
        elif kind is int:
            if isinstance(item, bool) or not isinstance(item, int) or not -(2**63) <= item < 2**63:
                raise _not_json()
            out[key] = item
        elif not isinstance(item, str):
            raise _not_json()
        else:
            out[key] = item
    for key, kind in schema.items():
        out.setdefault(key, _decode(None, kind) if isinstance(kind, dict) else (0 if kind is int else ""))
    return out


def _load(body: bytes) -> object:
    # Go's decoder reads the first JSON value and ignores what follows; invalid UTF-8 becomes U+FFFD.
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        raise _not_json() from None
    return value


def _check_delay(fields: Mapping[str, Any]) -> bool:
    """lk-jwt-service's check of the delayed-leave parameters; True when delegation is asked for."""
    has_id, has_timeout = fields["delay_id"] != "", fields["delay_timeout"] > 0
    if has_id != has_timeout:
        raise _bad_json("The request body is missing `delay_id` or `delay_timeout`")
    return has_id


def parse_legacy_request(body: bytes) -> TokenRequest:
    """A ``POST /sfu/get`` body; ``FocusError`` as lk-jwt-service answers it."""
    fields = _decode(_load(body), _LEGACY_FIELDS)
    openid = fields["openid_token"]
    if fields["room"] == "":
        raise _bad_json("Missing room parameter")
    if openid["access_token"] == "" or openid["matrix_server_name"] == "":
        raise _bad_json("Missing OpenID token parameters")
    delegation = _check_delay(fields)
    if fields["device_id"] == "":
        raise _bad_json("Missing device_id parameter")
    return TokenRequest(
        room_id=fields["room"],
        slot_id=LEGACY_SLOT_ID,
        openid=OpenIdToken(openid["access_token"], openid["matrix_server_name"]),
        device_id=fields["device_id"],
        delegation_requested=delegation,
    )


def parse_token_request(body: bytes) -> TokenRequest:
    """A ``POST /get_token`` body; ``FocusError`` as lk-jwt-service answers it."""
    fields = _decode(_load(body), _TOKEN_FIELDS)
    member, openid = fields["member"], fields["openid_token"]
    if fields["room_id"] == "" or fields["slot_id"] == "":
        raise _bad_json("The request body is missing `room_id` or `slot_id`")
    if member["id"] == "" or member["claimed_user_id"] == "" or member["claimed_device_id"] == "":
        raise _bad_json(
            "The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`"
        )
    if openid["access_token"] == "" or openid["matrix_server_name"] == "":
        raise _bad_json("The request body `openid_token` is missing a `access_token` or `matrix_server_name`")
    delegation = _check_delay(fields)
    return TokenRequest(
        room_id=fields["room_id"],
        slot_id=fields["slot_id"],
        openid=OpenIdToken(openid["access_token"], openid["matrix_server_name"]),
        device_id=member["claimed_device_id"],
        member_id=member["id"],
        claimed_user_id=member["claimed_user_id"],
        delegation_requested=delegation,
    )


# -- the service -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    url: str
    jwt: str
    identity: str
    room_name: str
    user_id: str
    can_open: bool


class TokenService:
    def __init__(
        self,
        *,
        focus: FocusConfig,
        policy: PolicyConfig,
        verifier: OpenIdVerifier,
        membership: MembershipChecker,
        clock: Clock,
        rooms: RoomRegistry | None = None,
    ) -> None:
        self._focus = focus
        self._policy = policy
        self._verifier = verifier
        self._membership = membership
        self._clock = clock
        self.rooms = rooms

    async def close(self) -> None:
        await self._verifier.close()

    async def issue(self, request: TokenRequest) -> IssuedToken:
        """Every check, then a token; ``FocusError`` on refusal."""
        server = request.openid.matrix_server_name
        # Before any request goes out: a client must not make this service call arbitrary hosts.
        if not self._policy.server_allowed(server):
            log.info("focus: refused a token to a user of %s (not in policy.allowed_servers)", server)
            raise FocusError(403, "M_FORBIDDEN", f"Users of {server} may not use this service")
        try:
            user_id = await self._verifier.user_id(request.openid)
        except OpenIdError as exc:
            log.info("focus: OpenID token for %s refused: %s", server, exc)
            raise FocusError(401, "M_UNAUTHORIZED", UNAUTHORIZED) from None
        if request.claimed_user_id is not None and request.claimed_user_id != user_id:
            log.warning(
                "focus: claimed user %s does not match the OpenID token's %s",
                request.claimed_user_id,
                user_id,
            )
            raise FocusError(401, "M_UNAUTHORIZED", UNAUTHORIZED)
        if request.delegation_requested:
            raise _bad_json("Delegation of delayed events is not supported by this service")
        if not await self._membership.is_joined(request.room_id, user_id):
            log.info("focus: refused a token to %s: not joined to %s", user_id, request.room_id)
            raise FocusError(
                403,
                "M_FORBIDDEN",
                f"{user_id} is not a member of {request.room_id} (or the room has no visio bot)",
            )
        can_open = self._policy.server_may_open_calls(server)
        if request.member_id is None:
            identity = legacy_identity(user_id, request.device_id)
        else:
            identity = hashed_identity(user_id, request.device_id, request.member_id)
        room_name = livekit_room_name(request.room_id, request.slot_id)
        jwt = issue_token(
            api_key=self._focus.api_key,
            api_secret=self._focus.api_secret,
            identity=identity,
            grants=VideoGrants(room=room_name),
            visio=VisioClaim(
                user_id=user_id,
                device_id=request.device_id,
                room_id=request.room_id,
                slot_id=request.slot_id,
                can_open=can_open,
            ),
            now=self._clock.wall_ms() / 1000,
            lifetime_s=self._focus.token_lifetime,
        )
        if self.rooms is not None:
            try:
                await self.rooms.remember(room_name, request.room_id, request.slot_id)
            except Exception as exc:  # the record is informational: never fail a call for it
                log.warning("focus: could not record LiveKit room %s: %s", room_name, exc)
        log.info(
            "focus: token for %s device %s in %s (%s, LiveKit room %s, identity %s, %s)",
            user_id,
            request.device_id,
            request.room_id,
            request.slot_id,
            room_name,
            identity,
            "may open the call" if can_open else "may only join",
        )
        return IssuedToken(self._focus.livekit_url, jwt, identity, room_name, user_id, can_open)

    # -- HTTP ------------------------------------------------------------------------------------

    async def handle_sfu_get(self, request: web.Request) -> web.Response:
        return await self._handle(request, parse_legacy_request)

    async def handle_get_token(self, request: web.Request) -> web.Response:
        return await self._handle(request, parse_token_request)

    async def handle_delegate_delayed_leave(self, request: web.Request) -> web.Response:
        """Not implemented (see the module docstring): 404 with CORS, so that clients can read it."""
        if request.method == hdrs.METH_OPTIONS:
            return web.Response(status=200, headers=CORS_HEADERS)
        return _error(FocusError(404, "M_UNRECOGNIZED", "Delegation of delayed events is not supported"))

    async def _handle(self, request: web.Request, parse: Callable[[bytes], TokenRequest]) -> web.Response:
        if request.method == hdrs.METH_OPTIONS:
            return web.Response(status=200, headers=CORS_HEADERS)
        if request.method != hdrs.METH_POST:
            return web.Response(status=405, headers=CORS_HEADERS)
        try:
            token_request = parse(await request.read())
            issued = await self.issue(token_request)
        except FocusError as exc:
            return _error(exc)
        except Exception:
            log.exception("focus: internal error while issuing a token")
            return _error(FocusError(500, "M_UNKNOWN", "Internal Server Error"))
        return web.Response(
            status=200, body=json.dumps({"url": issued.url, "jwt": issued.jwt}).encode(), headers=CORS_HEADERS
        )


def _error(exc: FocusError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=json.dumps({"errcode": exc.errcode, "error": exc.error}).encode(),
        headers=CORS_HEADERS,
    )


def focus_routes(service: TokenService) -> list[web.RouteDef]:
    """The token service's routes, every method (preflight, 405) handled by the service itself."""
    return [
        web.route(hdrs.METH_ANY, "/sfu/get", service.handle_sfu_get),
        web.route(hdrs.METH_ANY, "/get_token", service.handle_get_token),
        web.route(hdrs.METH_ANY, "/delegate_delayed_leave", service.handle_delegate_delayed_leave),
    ]


def token_service_from_config(
    config: Config, store: StateStore, membership: MembershipChecker, clock: Clock
) -> TokenService:
    """The service as ``app.py`` builds it: OpenID tokens of the local homeserver are checked at
    ``homeserver.url`` unless ``focus.homeserver_urls`` says otherwise. Call ``close()`` on stop."""
    overrides = {config.homeserver.server_name: config.homeserver.url, **config.focus.homeserver_urls}
    verifier = FederationOpenIdVerifier(clock, overrides, verify_tls=config.focus.verify_federation_tls)
    return TokenService(
        focus=config.focus,
        policy=config.policy,
        verifier=verifier,
        membership=membership,
        clock=clock,
        rooms=RoomRegistry(store),
    )
