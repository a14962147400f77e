"""Exceptions raised by the storage layer.

Callers catch :class:`StoreError` for "the database failed"; the subclasses say why when the caller
can act on it (a schema too new for this code, a conference already running in a room).
Backend exceptions (sqlite3, asyncpg, OSError) never leave this package unwrapped.
"""

from __future__ import annotations


class StoreError(Exception):
    """The database could not do what was asked (unreachable, broken, constraint, ...)."""


class UniqueViolationError(StoreError):
    """An INSERT or UPDATE broke a unique constraint (raised by both backends alike)."""


class MigrationError(StoreError):
    """A migration step failed; that step was rolled back entirely."""

    def __init__(self, message: str, *, version: int, applied_version: int) -> None:
        super().__init__(message)
        self.version = version
        self.applied_version = applied_version


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer visio-matrix than this one: refuse to touch it."""

    def __init__(self, db_version: int, code_version: int, where: str) -> None:
        super().__init__(
            f"database schema at {where} is version {db_version} > code version {code_version}: "
            f"it was upgraded by a newer visio-matrix; run that version (or restore a backup "
            f"taken before the upgrade)"
        )
        self.db_version = db_version
        self.code_version = code_version


class ConferenceExistsError(StoreError):
    """A conference is already active in the room."""

    def __init__(self, room_id: str, conference_id: str | None) -> None:
        super().__init__(f"a conference is already active in {room_id} ({conference_id})")
        self.room_id = room_id
        self.conference_id = conference_id
