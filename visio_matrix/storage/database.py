"""The contract between the store and a database backend (SQLite or PostgreSQL).

SQL is written once, in PostgreSQL's placeholder style (``$1``, ``$2``, ...) and in the common subset
of both dialects; each backend translates what it must. Every method raises :class:`StoreError`
(or a subclass such as :class:`UniqueViolationError`) instead of backend exceptions.

A :class:`Database` runs single statements in autocommit, or a group of statements in one
transaction::

    async with db.transaction() as tx:
        await tx.execute("UPDATE ... WHERE id = $1", some_id)
        row = await tx.fetchrow("SELECT ... WHERE id = $1", some_id)
"""

from __future__ import annotations

import abc
import re
from contextlib import AbstractAsyncContextManager
from functools import lru_cache
from typing import Any, Literal

Row = dict[str, Any]
Dialect = Literal["sqlite", "postgres"]

_PLACEHOLDER_RE = re.compile(r"\$(\d+)")


@lru_cache(maxsize=256)
def to_qmark_numbered(sql: str) -> str:
    """``$1`` -> ``?1`` (SQLite's numbered form, bound from a sequence like asyncpg's arguments)."""
    return _PLACEHOLDER_RE.sub(r"?\1", sql)


def status_rowcount(status: str) -> int:
    """Rows affected from an asyncpg command status (``INSERT 0 1``, ``UPDATE 3``, ``CREATE TABLE``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class Queryable(abc.ABC):
    """Statements on a database or inside one of its transactions."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed (0 for DDL)."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run one query; return all its rows."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


class Database(Queryable):
    """A connected backend; ``close()`` releases its connections."""

    dialect: Dialect
    #: where it is, safe to log (password masked)
    where: str

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Queryable]:
        """One transaction: committed when the block ends normally, rolled back when it raises."""

    @abc.abstractmethod
    async def ping(self, within_s: float) -> None:
        """Raise StoreError unless the database answers a trivial query within ``within_s`` seconds."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection; further calls fail."""
