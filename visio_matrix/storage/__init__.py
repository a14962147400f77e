"""Storage: one store interface over SQLite (embedded default) or PostgreSQL (asyncpg).

Usage::

    store = await open_store("sqlite:///var/lib/visio-matrix/visio.db")   # or "postgresql://..."
    try:
        if await store.claim_event(event_id, now_ms):
            ...
    finally:
        await store.close()

:func:`open_store` connects and applies the pending migrations (see ``migrations.py``). Only this
package imports asyncpg, aiosqlite or sqlite3; everything it raises is a :class:`StoreError`.

Modules: ``url`` (parse/mask URLs), ``database`` (backend contract), ``sqlite`` / ``postgres``
(backends), ``migrations`` (numbered steps), ``store`` (the queries), ``records``, ``errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .database import Database
from .errors import (
    ConferenceExistsError,
    MigrationError,
    SchemaTooNewError,
    StoreError,
    UniqueViolationError,
)
from .migrations import CODE_VERSION, MIGRATIONS, Migration, migrate
from .records import ConferenceRecord, ParticipantRecord
from .store import Store
from .url import DatabaseUrl, mask_url, parse_database_url, sqlite_url

__all__ = [
    "CODE_VERSION",
    "MIGRATIONS",
    "ConferenceExistsError",
    "ConferenceRecord",
    "Database",
    "DatabaseUrl",
    "Migration",
    "MigrationError",
    "ParticipantRecord",
    "SchemaTooNewError",
    "Store",
    "StoreError",
    "UniqueViolationError",
    "connect_database",
    "mask_url",
    "open_store",
    "parse_database_url",
    "sqlite_url",
]

log = logging.getLogger(__name__)


async def connect_database(url: str) -> Database:
    """Connect to the backend named by ``url`` without migrating (tools and tests)."""
    target = parse_database_url(url)
    if target.backend == "sqlite":
        from .sqlite import SqliteDatabase

        return await SqliteDatabase.connect(target.target)
    from .postgres import PostgresDatabase

    return await PostgresDatabase.connect(target.target)


async def open_store(url: str, *, migrations: Sequence[Migration] = MIGRATIONS) -> Store:
    """Connect to ``url``, apply pending migrations and return the store.

    Raises SchemaTooNewError when the database is newer than ``migrations``, MigrationError when a
    step fails, StoreError when the database cannot be reached. ``migrations`` is for tests.
    """
    db = await connect_database(url)
    try:
        version = await migrate(db, migrations)
    except BaseException:
        await db.close()
        raise
    log.info("opened %s database %s (schema version %d)", db.dialect, db.where, version)
    return Store(db)
