"""PostgreSQL backend: an asyncpg connection pool.

Each statement outside a transaction takes any free pooled connection; a transaction holds one
connection for its duration. asyncpg's exceptions are turned into :class:`StoreError` here, with the
DSN's password masked wherever the location is named.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from .database import Database, Queryable, Row, status_rowcount
from .errors import StoreError, UniqueViolationError
from .url import mask_url

CONNECT_TIMEOUT_S = 10.0

# Errors meaning "the database failed or is unreachable" rather than "this code is wrong".
_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)

# ... plus a malformed DSN at connect time.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_DB_ERRORS, ValueError)


def _wrap(err: BaseException, sql: str) -> StoreError:
    first_line = sql.strip().splitlines()[0] if sql.strip() else sql
    if isinstance(err, asyncpg.UniqueViolationError):
        return UniqueViolationError(f"postgres: {err} (in: {first_line})")
    return StoreError(f"postgres: {type(err).__name__}: {err} (in: {first_line})")


class _Connection(Queryable):
    """Statements on one connection (inside a transaction) or on the pool (autocommit)."""

    def __init__(self, target: asyncpg.Pool | asyncpg.Connection) -> None:
        self._target = target

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._target.execute(sql, *args)
        except _DB_ERRORS as err:
            raise _wrap(err, sql) from err
        return status_rowcount(status)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            records = await self._target.fetch(sql, *args)
        except _DB_ERRORS as err:
            raise _wrap(err, sql) from err
        return [dict(record) for record in records]


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._on_pool = _Connection(pool)
        self.where = mask_url(dsn)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT_S
            )
        except _CONNECT_ERRORS as err:
            # The message of a bad-DSN ValueError may quote the DSN: mask it too.
            reason = mask_url(str(err))
            raise StoreError(f"cannot connect to PostgreSQL at {mask_url(dsn)}: {reason}") from err
        return cls(pool, dsn)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._on_pool.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._on_pool.fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queryable]:
        try:
            conn = await self._pool.acquire()
        except _DB_ERRORS as err:
            raise StoreError(f"postgres: cannot get a connection to {self.where}: {err}") from err
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except _DB_ERRORS as err:
                raise _wrap(err, "BEGIN") from err
            try:
                yield _Connection(conn)
            except BaseException:
                with contextlib.suppress(*_DB_ERRORS):
                    await tx.rollback()
                raise
            try:
                await tx.commit()
            except _DB_ERRORS as err:
                raise _wrap(err, "COMMIT") from err
        finally:
            # asyncpg resets (or terminates) a connection released mid-statement, e.g. on cancellation.
            await self._pool.release(conn)

    async def ping(self, within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                await self._pool.fetchval("SELECT 1")
        except TimeoutError as err:
            raise StoreError(f"database {self.where} did not answer within {within_s:g}s") from err
        except _DB_ERRORS as err:
            raise StoreError(f"database {self.where} unreachable: {type(err).__name__}: {err}") from err

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()
