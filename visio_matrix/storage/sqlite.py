"""SQLite backend (the embedded default): one aiosqlite connection, one writer at a time.

SQLite allows one writer per file; rather than let concurrent tasks collide on ``SQLITE_BUSY``, every
statement and every transaction takes an asyncio lock on the single connection, so a transaction's
statements never interleave with another task's. The file runs in WAL mode (readers of other
processes, e.g. a backup, never block the service) with foreign keys enforced.
Transactions are ``BEGIN IMMEDIATE``: the write lock is taken up front, so a transaction never fails
half-way for lack of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import aiosqlite

from .database import Database, Queryable, Row, to_qmark_numbered
from .errors import StoreError, UniqueViolationError

log = logging.getLogger(__name__)

#: ON CONFLICT upserts and partial indexes need SQLite >= 3.24
MIN_SQLITE_VERSION = (3, 24, 0)
BUSY_TIMEOUT_MS = 10_000


def _wrap(err: sqlite3.Error, sql: str) -> StoreError:
    first_line = sql.strip().splitlines()[0] if sql.strip() else sql
    if isinstance(err, sqlite3.IntegrityError) and "UNIQUE" in str(err).upper():
        return UniqueViolationError(f"sqlite: {err} (in: {first_line})")
    return StoreError(f"sqlite: {err} (in: {first_line})")


def _probe_open(path: str) -> None:
    sqlite3.connect(path).close()


class _Connection(Queryable):
    """Statements on the connection; the caller holds the lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            async with self._conn.execute(to_qmark_numbered(sql), args) as cursor:
                return max(cursor.rowcount, 0)
        except sqlite3.Error as err:
            raise _wrap(err, sql) from err

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            async with self._conn.execute(to_qmark_numbered(sql), args) as cursor:
                rows = await cursor.fetchall()
                names = [d[0] for d in cursor.description or ()]
        except sqlite3.Error as err:
            raise _wrap(err, sql) from err
        return [dict(zip(names, row, strict=True)) for row in rows]


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = _Connection(conn)
        self._raw = conn
        self._lock = asyncio.Lock()
        self._closed = False
        self.path = path
        self.where = f"sqlite://{path}"

    @classmethod
    async def connect(cls, path: str) -> SqliteDatabase:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: visio-matrix needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        try:
            if path != ":memory:":
                # Opening once here first: when aiosqlite fails to open, its worker thread outlives
                # the failure and may report to a loop that is gone by then.
                await asyncio.to_thread(_probe_open, path)
            # isolation_level=None: autocommit; transactions are explicit BEGIN/COMMIT below.
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open SQLite database {path!r}: {err}") from err
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA foreign_keys = ON")
            if path != ":memory:":
                async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
                    mode = await cursor.fetchone()
                if mode is None or str(mode[0]).lower() != "wal":
                    log.warning("SQLite %s: could not enable WAL mode (journal_mode=%s)", path, mode)
        except sqlite3.Error as err:
            await conn.close()
            raise StoreError(f"cannot set up SQLite database {path!r}: {err}") from err
        return cls(conn, path)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"database {self.where} is closed")

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            self._check_open()
            return await self._conn.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            self._check_open()
            return await self._conn.fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queryable]:
        async with self._lock:
            self._check_open()
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                # Queued on the connection thread before anything else can be: the lock is still ours.
                with contextlib.suppress(sqlite3.Error, StoreError):
                    await self._raw.rollback()
                raise
            try:
                await self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error, StoreError):
                    await self._raw.rollback()
                raise

    async def ping(self, within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                await self.fetchval("SELECT 1")
        except TimeoutError as err:
            raise StoreError(f"database {self.where} did not answer within {within_s:g}s") from err

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._raw.close()
