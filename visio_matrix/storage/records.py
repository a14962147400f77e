"""Typed records read from the store (frozen: a record is a snapshot, never a live row)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConferenceRecord:
    """One conference (a call) in one room; active while ``ended_at_ms`` is None."""

    conference_id: str
    room_id: str
    started_by: str
    started_at_ms: int
    ended_at_ms: int | None
    ended_by: str | None
    state_event_id: str | None

    @property
    def active(self) -> bool:
        return self.ended_at_ms is None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ConferenceRecord:
        ended_at = row["ended_at_ms"]
        return cls(
            conference_id=row["conference_id"],
            room_id=row["room_id"],
            started_by=row["started_by"],
            started_at_ms=int(row["started_at_ms"]),
            ended_at_ms=None if ended_at is None else int(ended_at),
            ended_by=row["ended_by"],
            state_event_id=row["state_event_id"],
        )


@dataclass(frozen=True)
class ParticipantRecord:
    """One participant's presence in a conference; present while ``left_at_ms`` is None.

    ``transport_data`` is what the transport needs to bring the participant back after a restart
    (call id, session ids): string keys and values, stored as JSON.
    """

    participant_id: str
    conference_id: str
    user_id: str
    device_id: str
    transport: str
    transport_data: Mapping[str, str]
    joined_at_ms: int
    left_at_ms: int | None
    left_reason: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ParticipantRecord:
        data = json.loads(row["transport_data"])
        left_at = row["left_at_ms"]
        return cls(
            participant_id=row["participant_id"],
            conference_id=row["conference_id"],
            user_id=row["user_id"],
            device_id=row["device_id"],
            transport=row["transport"],
            transport_data={str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {},
            joined_at_ms=int(row["joined_at_ms"]),
            left_at_ms=None if left_at is None else int(left_at),
            left_reason=row["left_reason"],
        )
