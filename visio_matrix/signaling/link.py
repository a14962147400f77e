"""Relay-to-relay link signaling between two ministries' bots (pure; docs/federation.md, protocol.md).

A link uses the conference messages (``m.call.invite``/``answer``/``negotiate``/``hangup`` with the
group fields, Olm-encrypted to-device, bot device to bot device), each carrying ``io.visio.link``:

    {"server": "b.gouv.fr",                     # the sender's homeserver
     "owners": {"<msid stream id>": {"user_id": "@u:b.gouv.fr", "device_id": "DEV"}},
     "roster": [{"user_id": "@u:b.gouv.fr", "device_id": "DEV"}, ...],   # its side of the call
     "onward": false,                            # its users' media may go on to a third ministry
     "guests": 0}                                # guests in its side of the call

``owners`` names whose media each stream of the sender's SDP is (guests have ``guest:...`` ids).
One more type, ``io.visio.link.update``, carries a new roster and, from the side that answers, a
request for a new offer with more receive sections (``reoffer``: {"audio": n, "video": m}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .messages import SignalingError
from .parse import (
    ERR_BAD_TYPE,
    ERR_BAD_VALUE,
    ERR_NOT_OBJECT,
    ERR_TOO_LARGE,
    int_field,
    string_field,
    voip_id,
)

LINK_KEY = "io.visio.link"
LINK_UPDATE = "io.visio.link.update"
MAX_ROSTER = 1000
MAX_OWNERS = 512
MAX_FIELD = 255
MAX_SECTIONS = 64
_SERVER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


@dataclass(frozen=True)
class RosterEntry:
    user_id: str
    device_id: str


@dataclass(frozen=True)
class LinkInfo:
    server_name: str
    owners: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    roster: tuple[RosterEntry, ...] = ()
    onward: bool = False
    guests: int = 0


@dataclass(frozen=True)
class LinkUpdate:
    call_id: str
    room_id: str
    sender_session_id: str
    seq: int
    info: LinkInfo
    reoffer: tuple[int, int] | None = None  # (audio, video) receive sections to add, then re-offer


def _object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SignalingError(ERR_NOT_OBJECT, f"{path}: expected an object")
    return value


def _server(value: object, path: str) -> str:
    text = string_field(value, path, MAX_FIELD)
    if not set(text) <= _SERVER_CHARS:
        raise SignalingError(ERR_BAD_VALUE, f"{path}: not a server name")
    return text


def _owners(value: object, path: str) -> dict[str, dict[str, str]]:
    owners = _object(value, path)
    if len(owners) > MAX_OWNERS:
        raise SignalingError(ERR_TOO_LARGE, f"{path}: more than {MAX_OWNERS} streams")
    out: dict[str, dict[str, str]] = {}
    for stream_id, owner in owners.items():
        where = f"{path}.{stream_id}"
        string_field(stream_id, f"{path} key", MAX_FIELD)
        o = _object(owner, where)
        out[stream_id] = {
            "user_id": string_field(o.get("user_id"), f"{where}.user_id", MAX_FIELD),
            "device_id": string_field(
                o.get("device_id", ""), f"{where}.device_id", MAX_FIELD, allow_empty=True
            ),
        }
    return out


def _roster(value: object, path: str) -> tuple[RosterEntry, ...]:
    if not isinstance(value, list):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected a list")
    if len(value) > MAX_ROSTER:
        raise SignalingError(ERR_TOO_LARGE, f"{path}: more than {MAX_ROSTER} participants")
    out = []
    for i, entry in enumerate(value):
        e = _object(entry, f"{path}[{i}]")
        out.append(
            RosterEntry(
                string_field(e.get("user_id"), f"{path}[{i}].user_id", MAX_FIELD),
                string_field(e.get("device_id", ""), f"{path}[{i}].device_id", MAX_FIELD, allow_empty=True),
            )
        )
    return tuple(out)


def parse_link_info(value: object, path: str = LINK_KEY) -> LinkInfo | SignalingError:
    try:
        info = _object(value, path)
        onward = info.get("onward", False)
        if not isinstance(onward, bool):
            raise SignalingError(ERR_BAD_TYPE, f"{path}.onward: expected a boolean")
        return LinkInfo(
            server_name=_server(info.get("server"), f"{path}.server"),
            owners=_owners(info.get("owners", {}), f"{path}.owners"),
            roster=_roster(info.get("roster", []), f"{path}.roster"),
            onward=onward,
            guests=int_field(info.get("guests", 0), f"{path}.guests", minimum=0, maximum=MAX_ROSTER),
        )
    except SignalingError as error:
        return error


def link_info_content(info: LinkInfo) -> dict[str, Any]:
    return {
        "server": info.server_name,
        "owners": {sid: dict(owner) for sid, owner in info.owners.items()},
        "roster": [{"user_id": e.user_id, "device_id": e.device_id} for e in info.roster],
        "onward": info.onward,
        "guests": info.guests,
    }


def with_link_info(content: dict[str, Any], info: LinkInfo) -> dict[str, Any]:
    """Adds ``io.visio.link`` to conference content (mutates and returns it)."""
    content[LINK_KEY] = link_info_content(info)
    return content


def link_info_of(content: Mapping[str, Any]) -> LinkInfo | SignalingError | None:
    """The ``io.visio.link`` of a conference message: None when absent (not a link message)."""
    if LINK_KEY not in content:
        return None
    return parse_link_info(content[LINK_KEY])


def parse_link_update(content: object) -> LinkUpdate | SignalingError:
    try:
        c = _object(content, "content")
        reoffer = None
        if "reoffer" in c:
            r = _object(c["reoffer"], "reoffer")
            reoffer = (
                int_field(r.get("audio", 0), "reoffer.audio", minimum=0, maximum=MAX_SECTIONS),
                int_field(r.get("video", 0), "reoffer.video", minimum=0, maximum=MAX_SECTIONS),
            )
        info = parse_link_info(c.get(LINK_KEY), LINK_KEY)
        if isinstance(info, SignalingError):
            raise info
        room_id = string_field(c.get("room_id"), "room_id", MAX_FIELD)
        if not room_id.startswith("!"):
            raise SignalingError(ERR_BAD_VALUE, "room_id: not a Matrix room ID")
        return LinkUpdate(
            call_id=voip_id(c.get("call_id"), "call_id"),
            room_id=room_id,
            sender_session_id=voip_id(c.get("sender_session_id"), "sender_session_id"),
            seq=int_field(c.get("seq"), "seq", minimum=0, maximum=2**53),
            info=info,
            reoffer=reoffer,
        )
    except SignalingError as error:
        return error


def build_link_update(
    call_id: str,
    room_id: str,
    sender_session_id: str,
    seq: int,
    info: LinkInfo,
    reoffer: tuple[int, int] | None = None,
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "call_id": call_id,
        "room_id": room_id,
        "sender_session_id": sender_session_id,
        "seq": seq,
        LINK_KEY: link_info_content(info),
    }
    if reoffer is not None:
        content["reoffer"] = {"audio": reoffer[0], "video": reoffer[1]}
    return content
