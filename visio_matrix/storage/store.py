"""The store: everything visio-matrix persists, as typed async methods over a :class:`Database`.

The SQL is written once and runs on both backends. Guarantees that matter for correctness live in
the database, not in this code: an event is claimed by one caller only (primary key + ``ON CONFLICT
DO NOTHING``), and a room has at most one active conference (a partial unique index).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from .database import Database
from .errors import ConferenceExistsError, UniqueViolationError
from .records import ConferenceRecord, ParticipantRecord

PING_TIMEOUT_S = 5.0

_PARTICIPANT_COLUMNS = (
    "participant_id, conference_id, user_id, device_id, transport, transport_data, "
    "joined_at_ms, left_at_ms, left_reason"
)
_CONFERENCE_COLUMNS = (
    "conference_id, room_id, started_by, started_at_ms, ended_at_ms, ended_by, state_event_id"
)


def new_conference_id() -> str:
    """A random, URL-safe identifier (128 bits)."""
    return secrets.token_urlsafe(16)


class Store:
    """Persistent state of the service. Build it with :func:`visio_matrix.storage.open_store`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgres"``."""
        return self._db.dialect

    @property
    def where(self) -> str:
        """Where the database is, safe to log (password masked)."""
        return self._db.where

    async def close(self) -> None:
        await self._db.close()

    async def ping(self, within_s: float = PING_TIMEOUT_S) -> None:
        """Return when the database answers; raise StoreError when it does not within ``within_s``."""
        await self._db.ping(within_s)

    # -- appservice transactions and events: processed once, also across restarts

    async def is_transaction_done(self, txn_id: str) -> bool:
        row = await self._db.fetchrow("SELECT 1 AS done FROM appservice_txn WHERE txn_id = $1", txn_id)
        return row is not None

    async def mark_transaction_done(self, txn_id: str, now_ms: int) -> None:
        """Idempotent: marking a transaction twice keeps the first time."""
        await self._db.execute(
            "INSERT INTO appservice_txn (txn_id, done_at_ms) VALUES ($1, $2) ON CONFLICT (txn_id) DO NOTHING",
            txn_id,
            now_ms,
        )

    async def claim_event(self, event_id: str, now_ms: int) -> bool:
        """Atomically record ``event_id``; True for exactly one caller, False once it was claimed."""
        inserted = await self._db.execute(
            "INSERT INTO processed_event (event_id, claimed_at_ms) VALUES ($1, $2) "
            "ON CONFLICT (event_id) DO NOTHING",
            event_id,
            now_ms,
        )
        return inserted == 1

    async def prune(self, older_than_ms: int) -> int:
        """Forget transaction and event ids recorded before ``older_than_ms``; return how many went."""
        async with self._db.transaction() as tx:
            txns = await tx.execute("DELETE FROM appservice_txn WHERE done_at_ms < $1", older_than_ms)
            events = await tx.execute("DELETE FROM processed_event WHERE claimed_at_ms < $1", older_than_ms)
        return txns + events

    # -- small key/value state (sync token, bot device id, ...)

    async def get_state(self, key: str) -> str | None:
        value = await self._db.fetchval("SELECT value FROM kv_state WHERE key = $1", key)
        return None if value is None else str(value)

    async def set_state(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO kv_state (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )

    async def delete_state(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        return await self._db.execute("DELETE FROM kv_state WHERE key = $1", key) == 1

    # -- conferences: at most one active per room

    async def create_conference(self, room_id: str, started_by: str, now_ms: int) -> ConferenceRecord:
        """Start a conference in ``room_id``; raise ConferenceExistsError when one is active there."""
        record = ConferenceRecord(
            conference_id=new_conference_id(),
            room_id=room_id,
            started_by=started_by,
            started_at_ms=now_ms,
            ended_at_ms=None,
            ended_by=None,
            state_event_id=None,
        )
        try:
            await self._db.execute(
                "INSERT INTO conference (conference_id, room_id, started_by, started_at_ms) "
                "VALUES ($1, $2, $3, $4)",
                record.conference_id,
                room_id,
                started_by,
                now_ms,
            )
        except UniqueViolationError as err:
            active = await self.get_active_conference(room_id)
            raise ConferenceExistsError(room_id, active.conference_id if active else None) from err
        return record

    async def get_conference(self, conference_id: str) -> ConferenceRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {_CONFERENCE_COLUMNS} FROM conference WHERE conference_id = $1", conference_id
        )
        return None if row is None else ConferenceRecord.from_row(row)

    async def get_active_conference(self, room_id: str) -> ConferenceRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {_CONFERENCE_COLUMNS} FROM conference WHERE room_id = $1 AND ended_at_ms IS NULL",
            room_id,
        )
        return None if row is None else ConferenceRecord.from_row(row)

    async def end_conference(self, conference_id: str, ended_by: str, now_ms: int) -> ConferenceRecord | None:
        """End an active conference and return it ended; None when unknown or already ended."""
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE conference SET ended_at_ms = $2, ended_by = $3 "
                "WHERE conference_id = $1 AND ended_at_ms IS NULL",
                conference_id,
                now_ms,
                ended_by,
            )
            if changed != 1:
                return None
            row = await tx.fetchrow(
                f"SELECT {_CONFERENCE_COLUMNS} FROM conference WHERE conference_id = $1", conference_id
            )
        return None if row is None else ConferenceRecord.from_row(row)

    async def list_active_conferences(self) -> list[ConferenceRecord]:
        """Active conferences, oldest first."""
        rows = await self._db.fetch(
            f"SELECT {_CONFERENCE_COLUMNS} FROM conference WHERE ended_at_ms IS NULL "
            "ORDER BY started_at_ms, conference_id"
        )
        return [ConferenceRecord.from_row(row) for row in rows]

    async def set_conference_state_event(self, conference_id: str, event_id: str) -> None:
        """Remember the room message the bot edits to show this call's state."""
        await self._db.execute(
            "UPDATE conference SET state_event_id = $2 WHERE conference_id = $1", conference_id, event_id
        )

    # -- participants of conferences

    async def add_participant(
        self,
        participant_id: str,
        conference_id: str,
        user_id: str,
        device_id: str,
        transport: str,
        transport_data: Mapping[str, str],
        now_ms: int,
    ) -> None:
        await self._db.execute(
            f"INSERT INTO conference_participant ({_PARTICIPANT_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
            participant_id,
            conference_id,
            user_id,
            device_id,
            transport,
            json.dumps(dict(transport_data), sort_keys=True),
            now_ms,
        )

    async def mark_participant_left(self, participant_id: str, reason: str, now_ms: int) -> bool:
        """Record that a participant left; False when unknown or already gone."""
        changed = await self._db.execute(
            "UPDATE conference_participant SET left_at_ms = $2, left_reason = $3 "
            "WHERE participant_id = $1 AND left_at_ms IS NULL",
            participant_id,
            now_ms,
            reason,
        )
        return changed == 1

    async def list_participants(
        self, conference_id: str, present_only: bool = False
    ) -> list[ParticipantRecord]:
        """Participants of a conference in join order (all, or only those still present)."""
        extra = " AND left_at_ms IS NULL" if present_only else ""
        rows = await self._db.fetch(
            f"SELECT {_PARTICIPANT_COLUMNS} FROM conference_participant WHERE conference_id = $1{extra} "
            "ORDER BY joined_at_ms, participant_id",
            conference_id,
        )
        return [ParticipantRecord.from_row(row) for row in rows]

    async def mark_all_participants_left(self, conference_id: str, reason: str, now_ms: int) -> int:
        return await self._db.execute(
            "UPDATE conference_participant SET left_at_ms = $2, left_reason = $3 "
            "WHERE conference_id = $1 AND left_at_ms IS NULL",
            conference_id,
            now_ms,
            reason,
        )
