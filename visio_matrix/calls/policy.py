"""Who may do what in a room (pure): power levels.

Room versions 12 and later make the room's creators privileged (MSC4289): they are not listed in
``m.room.power_levels`` but outrank everyone, so they are treated as having infinite power here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def _privileged_creators(create_event: Mapping[str, Any] | None) -> set[str]:
    if not create_event:
        return set()
    content = create_event.get("content")
    if not isinstance(content, dict):
        return set()
    version = str(content.get("room_version", "1"))
    if not version.isdigit() or int(version) < 12:
        return set()
    creators = {str(create_event.get("sender", ""))}
    extra = content.get("additional_creators")
    if isinstance(extra, list):
        creators.update(str(u) for u in extra)
    return creators


def power_level_of(
    user_id: str,
    power_levels: Mapping[str, Any] | None,
    create_event: Mapping[str, Any] | None = None,
) -> float:
    """The user's power level in the room (``math.inf`` for privileged creators)."""
    if user_id in _privileged_creators(create_event):
        return math.inf
    if power_levels is None:
        # No power levels event: the creator has 100, everyone else 0 (spec, room versions < 12).
        creator = None
        if create_event:
            content = create_event.get("content")
            creator = (content or {}).get("creator") if isinstance(content, dict) else None
            creator = creator or create_event.get("sender")
        return 100 if user_id == creator else 0
    users = power_levels.get("users")
    if isinstance(users, dict) and user_id in users:
        return _int(users[user_id], 0)
    return _int(power_levels.get("users_default"), 0)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def may_act(
    user_id: str,
    required_level: int,
    power_levels: Mapping[str, Any] | None,
    create_event: Mapping[str, Any] | None,
    action: str,
) -> Decision:
    level = power_level_of(user_id, power_levels, create_event)
    if level >= required_level:
        return Decision(True)
    shown = "∞" if level == math.inf else str(int(level))
    return Decision(False, f"{action} needs power level {required_level} in this room; you have {shown}")
