"""Parsing of what the homeserver pushes: transaction bodies and room events.

Pure code. A transaction body that is not a JSON object with an ``events`` list is refused as a
whole (``BodyError``, mapped to 400 by the HTTP layer); a single malformed event becomes a
``BadEvent`` value so that the rest of its transaction is still processed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Keys under which homeservers put MSC2409 / MSC3202 data (stable and unstable names).
TO_DEVICE_KEYS = ("to_device", "de.sorunome.msc2409.to_device", "org.matrix.msc2409.to_device")
EPHEMERAL_KEYS = ("ephemeral", "de.sorunome.msc2409.ephemeral")
DEVICE_LISTS_KEYS = ("device_lists", "org.matrix.msc3202.device_lists")
OTK_COUNT_KEYS = ("device_one_time_keys_count", "org.matrix.msc3202.device_one_time_keys_count")


class BodyError(ValueError):
    """The whole request body is unusable; ``errcode`` is the Matrix error code to answer with."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.message = message


@dataclass(frozen=True)
class RoomEvent:
    event_id: str
    room_id: str
    sender: str
    type: str
    content: dict[str, Any]
    origin_server_ts: int
    state_key: str | None = None
    unsigned: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class BadEvent:
    """An event we could not parse: kept as a value so it can be logged and skipped."""

    reason: str
    event_id: str | None
    raw: object = field(repr=False, compare=False)


@dataclass(frozen=True)
class Transaction:
    events: tuple[dict[str, Any] | object, ...]
    ephemeral: tuple[object, ...] = ()
    to_device: tuple[object, ...] = ()
    device_lists: dict[str, Any] = field(default_factory=dict)
    otk_counts: dict[str, Any] = field(default_factory=dict)


def parse_transaction_body(body: object) -> Transaction:
    if not isinstance(body, dict):
        raise BodyError("M_BAD_JSON", "transaction body must be a JSON object")
    events = body.get("events")
    if not isinstance(events, list):
        raise BodyError("M_BAD_JSON", "transaction body must have an 'events' list")

    def first_list(keys: tuple[str, ...]) -> tuple[object, ...]:
        for key in keys:
            value = body.get(key)
            if isinstance(value, list):
                return tuple(value)
        return ()

    def first_dict(keys: tuple[str, ...]) -> dict[str, Any]:
        for key in keys:
            value = body.get(key)
            if isinstance(value, dict):
                return value
        return {}

    return Transaction(
        events=tuple(events),
        ephemeral=first_list(EPHEMERAL_KEYS),
        to_device=first_list(TO_DEVICE_KEYS),
        device_lists=first_dict(DEVICE_LISTS_KEYS),
        otk_counts=first_dict(OTK_COUNT_KEYS),
    )


def _require_str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string, got {type(value).__name__}")
    return value


def parse_room_event(raw: object) -> RoomEvent | BadEvent:
    if not isinstance(raw, dict):
        return BadEvent(f"event must be a JSON object, got {type(raw).__name__}", None, raw)
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    try:
        room_id = _require_str(raw, "room_id")
        sender = _require_str(raw, "sender")
        event_type = _require_str(raw, "type")
        if event_id is None:
            raise ValueError("'event_id' must be a non-empty string")
        content = raw.get("content")
        if not isinstance(content, dict):
            raise ValueError(f"'content' must be an object, got {type(content).__name__}")
        ts = raw.get("origin_server_ts", 0)
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise ValueError("'origin_server_ts' must be an integer")
        state_key = raw.get("state_key")
        if state_key is not None and not isinstance(state_key, str):
            raise ValueError("'state_key' must be a string")
        unsigned = raw.get("unsigned")
        if not isinstance(unsigned, dict):
            unsigned = {}
    except ValueError as exc:
        return BadEvent(str(exc), event_id, raw)
    return RoomEvent(
        event_id=event_id,
        room_id=room_id,
        sender=sender,
        type=event_type,
        content=content,
        origin_server_ts=ts,
        state_key=state_key,
        unsigned=unsigned,
        raw=raw,
    )


def server_name_of(user_id: str) -> str:
    """``@alice:example.org:8448`` -> ``example.org:8448``. Raises ValueError on a malformed ID."""
    if not user_id.startswith("@") or ":" not in user_id:
        raise ValueError(f"not a Matrix user ID: {user_id!r}")
    return user_id.split(":", 1)[1]
