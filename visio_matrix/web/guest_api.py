"""Guests by link, the HTTP shell: the lobby page, ``arrive`` and ``status``; plus the room side
(``!visio link`` / ``admit`` / ``deny``) that ``calls.room_bot.RoomBot`` calls.

::

    GET  /guest/{token}                 the lobby page (inline HTML + JS), or a clear 4xx page
    POST /guest/api/arrive              {"token", "name"} -> {"guest_id", "state", "name"}
    GET  /guest/api/status/{guest_id}   {"state", "name"} (+ "url", "jwt", "call_url" once admitted)

``GuestService`` ties ``guest_links`` (signed links), ``lobby.Lobby`` (who waits, who was admitted)
and ``focus.jwt.issue_token`` together. Only an admitted guest ever gets a LiveKit token; it says
``io.visio.guest = true`` and ``can_open = false`` (a guest never creates a conference), its identity
is ``guest:<public id>`` where the public id is a hash of the secret ``guest_id`` (other participants
see the identity; only the guest's browser knows ``guest_id``, the key to its status and token).

The bot posts "<name> is waiting" through ``notify`` (set by the wiring to the bot device's encrypted
send). Nothing secret is logged: no link token, no guest ID, no JWT.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from visio_matrix.calls.hub_api import GUEST_USER_PREFIX
from visio_matrix.clock import Clock
from visio_matrix.config.model import FocusConfig, GuestsConfig
from visio_matrix.focus.identity import LEGACY_SLOT_ID, livekit_room_name
from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token
from visio_matrix.tasks import TaskOwner
from visio_matrix.web.guest_links import (
    MAX_TOKEN_CHARS,
    LinkError,
    link_url,
    load_private_key,
    load_public_key,
    new_link,
    sign_link,
    verify_link,
)
from visio_matrix.web.lobby import GuestState, GuestTicket, Lobby, LobbyDecision, LobbyError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
MAX_GUEST_ID_CHARS = 64
FORGET_INTERVAL_S = 30.0

Notify = Callable[[str, str], Awaitable[object]]  # (room_id, plain text) -> posted as an m.notice

_LINK_STATUS = {"malformed": 400, "bad_signature": 403, "expired": 410}
_LINK_TEXT = {
    "malformed": "This guest link is not valid. Check that it was copied completely.",
    "bad_signature": "This guest link was not issued by this service, or it was altered.",
    "expired": "This guest link has expired. Ask the people in the room for a new one.",
}
_LOBBY_STATUS = {
    "invalid_name": 400,
    "link_expired": 410,
    "room_full": 429,
    "lobby_full": 429,
    "unknown_guest": 404,
    "not_admitted": 403,
}


def public_guest_id(guest_id: str) -> str:
    """The identity other participants see for a guest: not the secret ``guest_id`` itself."""
    digest = hashlib.sha256(b"io.visio.guest-public-id:" + guest_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


class GuestService:
    """The guest flow of one service: links, the lobby, and call tokens for admitted guests."""

    def __init__(
        self,
        guests: GuestsConfig,
        focus: FocusConfig,
        clock: Clock,
        *,
        notify: Notify | None = None,
        lobby: Lobby | None = None,
    ) -> None:
        if not guests.enabled or not guests.signing_key:
            raise ValueError("guests are disabled (no guests.signing_key)")
        self._guests = guests
        self._focus = focus
        self._clock = clock
        self._private_key = load_private_key(guests.signing_key)
        self._public_keys: list[Ed25519PublicKey] = [self._private_key.public_key()]
        self._public_keys += [load_public_key(text) for text in guests.old_public_keys]
        self.lobby = lobby if lobby is not None else Lobby(max_wait_s=guests.max_wait)
        self.notify = notify
        self._tasks = TaskOwner("guests")

    def _now_s(self) -> float:
        return self._clock.wall_ms() / 1000

    async def start(self) -> None:
        self._tasks.spawn(self._forget_loop(), "guest-lobby-forget")

    async def stop(self) -> None:
        await self._tasks.close()

    async def _forget_loop(self) -> None:
        while True:
            await asyncio.sleep(FORGET_INTERVAL_S)
            gone = self.lobby.forget_expired(self._now_s())
            if gone:
                log.debug("forgot %d finished guest visits", len(gone))

    # ---- the room side (RoomBot) ------------------------------------------------------------------

    def new_link_url(self, room_id: str) -> str:
        """A signed link into ``room_id``'s lobby, valid for ``guests.link_lifetime``."""
        link = new_link(room_id, self._now_s(), self._guests.link_lifetime)
        return link_url(self._focus.public_url, sign_link(link, self._private_key))

    @property
    def link_lifetime_s(self) -> float:
        return self._guests.link_lifetime

    def admit(self, room_id: str, name: str, by_user: str) -> LobbyDecision:
        decision = self.lobby.admit(room_id, name, by_user, self._now_s())
        log.info("guest %r in %s admitted by %s", decision.ticket.name, room_id, by_user)
        return decision

    def deny(self, room_id: str, name: str, by_user: str) -> LobbyDecision:
        decision = self.lobby.deny(room_id, name, by_user, self._now_s())
        log.info("guest %r in %s denied by %s", decision.ticket.name, room_id, by_user)
        return decision

    # ---- the guest side (HTTP) --------------------------------------------------------------------

    def check_link(self, token: str) -> str:
        """The room the link is for; ``LinkError`` when it must be refused."""
        return verify_link(token, self._public_keys, self._now_s()).room_id

    async def arrive(self, token: str, name: str) -> GuestTicket:
        link = verify_link(token, self._public_keys, self._now_s())
        ticket = self.lobby.arrive(link, name, self._now_s())
        log.info("a guest is waiting in %s", link.room_id)
        if self.notify is not None:
            text = f"{ticket.name} is waiting (type !visio admit {ticket.name} or !visio deny {ticket.name})"
            try:
                await self.notify(link.room_id, text)
            except Exception as exc:  # the guest still waits; members may see it with a later message
                log.warning("could not tell %s that a guest is waiting: %s", link.room_id, exc)
        return ticket

    def status(self, guest_id: str) -> dict[str, Any]:
        ticket = self.lobby.status(guest_id, self._now_s())
        body: dict[str, Any] = {"state": ticket.state.value, "name": ticket.name}
        if ticket.state_until_s is not None:
            body["until_s"] = ticket.state_until_s
        if ticket.state is GuestState.ADMITTED:
            jwt = self.call_token(ticket)
            body["url"] = self._focus.livekit_url
            body["jwt"] = jwt
            body["call_url"] = f"{self._focus.public_url.rstrip('/')}/call/?" + urlencode(
                {"url": self._focus.livekit_url, "jwt": jwt}
            )
        return body

    def call_token(self, ticket: GuestTicket) -> str:
        """A LiveKit token for an admitted guest (``LobbyError`` "not_admitted" otherwise)."""
        ticket = self.lobby.admission(ticket.guest_id, self._now_s())
        public_id = public_guest_id(ticket.guest_id)
        user_id = f"{GUEST_USER_PREFIX}{public_id}"
        return issue_token(
            api_key=self._focus.api_key,
            api_secret=self._focus.api_secret,
            identity=user_id,
            grants=VideoGrants(room=livekit_room_name(ticket.room_id, LEGACY_SLOT_ID)),
            visio=VisioClaim(
                user_id=user_id,
                device_id=public_id,
                room_id=ticket.room_id,
                slot_id=LEGACY_SLOT_ID,
                can_open=False,
                guest=True,
            ),
            now=self._now_s(),
            lifetime_s=self._focus.token_lifetime,
            name=ticket.name,
        )


# ---- HTTP --------------------------------------------------------------------------------------------


def _json_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


def _page(status: int, title: str, body_html: str) -> web.Response:
    text = _PAGE.replace("{title}", html.escape(title)).replace("{body}", body_html)
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _refusal_page(status: int, message: str) -> web.Response:
    return _page(status, "Guest link refused", f'<p role="alert" id="refused">{html.escape(message)}</p>')


def guest_routes(service: GuestService) -> list[web.RouteDef]:
    """The guest routes, to add to the appservice application."""

    async def lobby_page(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            service.check_link(token)
        except LinkError as exc:
            return _refusal_page(_LINK_STATUS[exc.code], _LINK_TEXT[exc.code])
        data = html.escape(json.dumps({"token": token}), quote=True)
        return _page(200, "Join the call", _LOBBY_BODY.replace("{data}", data))

    async def arrive(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _json_error(413, "M_TOO_LARGE", f"the body must be at most {MAX_BODY_BYTES} bytes")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return _json_error(413, "M_TOO_LARGE", f"the body must be at most {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _json_error(400, "M_NOT_JSON", "the body must be a JSON object")
        if not isinstance(body, dict):
            return _json_error(400, "M_BAD_JSON", "the body must be a JSON object")
        token, name = body.get("token"), body.get("name")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            return _json_error(400, "M_BAD_JSON", "'token' must be the guest link token")
        if not isinstance(name, str):
            return _json_error(400, "M_BAD_JSON", "'name' must be a string")
        try:
            ticket = await service.arrive(token, name)
        except LinkError as exc:
            return _json_error(
                _LINK_STATUS[exc.code], f"IO_VISIO_LINK_{exc.code.upper()}", _LINK_TEXT[exc.code]
            )
        except LobbyError as exc:
            return _json_error(_LOBBY_STATUS.get(exc.code, 400), f"IO_VISIO_{exc.code.upper()}", exc.message)
        return web.json_response(
            {"guest_id": ticket.guest_id, "state": ticket.state.value, "name": ticket.name}
        )

    async def status(request: web.Request) -> web.Response:
        guest_id = request.match_info["guest_id"]
        if len(guest_id) > MAX_GUEST_ID_CHARS:
            return _json_error(404, "IO_VISIO_UNKNOWN_GUEST", "Unknown guest (the visit may have ended).")
        try:
            body = service.status(guest_id)
        except LobbyError as exc:
            return _json_error(_LOBBY_STATUS.get(exc.code, 400), f"IO_VISIO_{exc.code.upper()}", exc.message)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return [
        web.post("/guest/api/arrive", arrive),
        web.get("/guest/api/status/{guest_id}", status),
        web.get("/guest/{token}", lobby_page),
    ]


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 32rem; margin: 3rem auto; padding: 0 1rem; }
label, input, button { font-size: 1.1rem; }
input { padding: .4rem; width: 100%; box-sizing: border-box; margin: .4rem 0 1rem; }
button { padding: .5rem 1.2rem; }
#refused, .error { color: #a00; }
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""

_LOBBY_BODY = """<div id="lobby" data-link="{data}">
<form id="arrive">
<label for="name">Your name, as the people in the call will see it</label>
<input id="name" name="name" maxlength="64" autocomplete="name" required autofocus>
<button type="submit" id="ask">Ask to join</button>
</form>
<p id="status" role="status" aria-live="polite"></p>
</div>
<script>
(function () {
  "use strict";
  var root = document.getElementById("lobby");
  var token = JSON.parse(root.dataset.link).token;
  var form = document.getElementById("arrive");
  var statusEl = document.getElementById("status");
  var base = location.pathname.replace(/\\/guest\\/[^/]*$/, "");
  function say(text, error) {
    statusEl.textContent = text;
    statusEl.className = error ? "error" : "";
  }
  function poll(guestId) {
    fetch(base + "/guest/api/status/" + encodeURIComponent(guestId), {cache: "no-store"})
      .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
      .then(function (rb) {
        var b = rb[1];
        if (rb[0] !== 200) { say(b.error || "The visit has ended.", true); return; }
        if (b.state === "waiting") {
          say("Waiting for someone in the room to let you in...");
          setTimeout(function () { poll(guestId); }, 2000);
        } else if (b.state === "admitted") {
          say("You were let in: joining the call...");
          location.assign(base + "/call/?url=" + encodeURIComponent(b.url) + "&jwt=" + encodeURIComponent(b.jwt));
        } else if (b.state === "denied") {
          say("Sorry, you were not let in to this call.", true);
        } else {
          say("Nobody let you in in time. Ask the people in the room for a new link.", true);
        }
      })
      .catch(function () { setTimeout(function () { poll(guestId); }, 4000); });
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = document.getElementById("name").value;
    fetch(base + "/guest/api/arrive", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: token, name: name})
    })
      .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
      .then(function (rb) {
        if (rb[0] !== 200) { say(rb[1].error || "Refused.", true); return; }
        form.hidden = true;
        poll(rb[1].guest_id);
      })
      .catch(function () { say("The service could not be reached; please try again.", true); });
  });
})();
</script>
"""
