"""Typed records read from the store (frozen: a record is a snapshot, never a live row)."""

from __future__ import annotations

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
