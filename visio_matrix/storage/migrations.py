"""Schema migrations: a numbered list of steps, each run in one transaction, on both backends.

The database records every applied step in ``schema_version``; its highest version is the schema
version. At start-up :func:`migrate` applies the missing steps in order, each in its own
transaction together with its ``schema_version`` row, so a failing step leaves no trace and the
database stays at the previous version. A database whose version is higher than the code's last
step was upgraded by a newer release: it is refused (:class:`SchemaTooNewError`), never touched.

Rules for new steps: append, never edit or renumber a released step; write SQL in the subset both
SQLite and PostgreSQL accept (TEXT, BIGINT, partial indexes, ``ON CONFLICT``); no ``$`` placeholders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .database import Database, Queryable
from .errors import MigrationError, SchemaTooNewError, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """Step ``version``: its statements run in one transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "appservice transactions, processed events, key/value state",
        (
            "CREATE TABLE appservice_txn (txn_id TEXT PRIMARY KEY, done_at_ms BIGINT NOT NULL)",
            "CREATE INDEX appservice_txn_done_at ON appservice_txn (done_at_ms)",
            "CREATE TABLE processed_event (event_id TEXT PRIMARY KEY, claimed_at_ms BIGINT NOT NULL)",
            "CREATE INDEX processed_event_claimed_at ON processed_event (claimed_at_ms)",
            "CREATE TABLE kv_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "conferences, at most one active per room",
        (
            """CREATE TABLE conference (
                conference_id TEXT PRIMARY KEY,
                room_id TEXT NOT NULL,
                started_by TEXT NOT NULL,
                started_at_ms BIGINT NOT NULL,
                ended_at_ms BIGINT,
                ended_by TEXT,
                state_event_id TEXT,
                CHECK ((ended_at_ms IS NULL) = (ended_by IS NULL))
            )""",
            # The database, not the code, guarantees one active conference per room.
            "CREATE UNIQUE INDEX conference_one_active_per_room ON conference (room_id) "
            "WHERE ended_at_ms IS NULL",
            "CREATE INDEX conference_room_started ON conference (room_id, started_at_ms)",
        ),
    ),
    Migration(
        3,
        "conference participants (for summaries and for bringing them back after a restart)",
        (
            """CREATE TABLE conference_participant (
                participant_id TEXT PRIMARY KEY,
                conference_id TEXT NOT NULL REFERENCES conference (conference_id),
                user_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                transport TEXT NOT NULL,
                transport_data TEXT NOT NULL,
                joined_at_ms BIGINT NOT NULL,
                left_at_ms BIGINT,
                left_reason TEXT
            )""",
            "CREATE INDEX conference_participant_conf ON conference_participant (conference_id, joined_at_ms)",
        ),
    ),
)

CODE_VERSION = MIGRATIONS[-1].version

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)"
)


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


def check_steps(steps: Sequence[Migration]) -> None:
    """Raise ValueError unless steps are numbered 1, 2, ..., N and none is empty."""
    for index, step in enumerate(steps, start=1):
        if step.version != index:
            raise ValueError(f"migration steps must be numbered 1..N: step #{index} is {step.version}")
        if not step.statements:
            raise ValueError(f"migration step {step.version} has no statements")


async def schema_version(db: Queryable) -> int:
    """The highest applied step, 0 for an empty database (``schema_version`` must exist)."""
    return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))


async def migrate(
    db: Database,
    steps: Sequence[Migration] = MIGRATIONS,
    *,
    now_ms: Callable[[], int] = _wall_clock_ms,
) -> int:
    """Bring the schema up to the last of ``steps``; return the resulting version.

    Raises SchemaTooNewError (nothing touched) when the database is ahead of ``steps``, and
    MigrationError when a step fails (that step rolled back, the earlier ones kept).
    """
    check_steps(steps)
    code_version = len(steps)
    await db.execute(SCHEMA_VERSION_DDL)
    version = await schema_version(db)
    if version > code_version:
        raise SchemaTooNewError(version, code_version, db.where)
    for step in steps[version:]:
        try:
            async with db.transaction() as tx:
                if db.dialect == "postgres":
                    # Another instance migrating the same database waits here, then sees our work.
                    await tx.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
                applied = await schema_version(tx)
                if applied >= step.version:
                    continue
                for statement in step.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_version (version, description, applied_at_ms) VALUES ($1, $2, $3)",
                    step.version,
                    step.description,
                    now_ms(),
                )
        except StoreError as err:
            raise MigrationError(
                f"migration step {step.version} ({step.description}) failed on {db.where} and was "
                f"rolled back; the database stays at version {step.version - 1}: {err}",
                version=step.version,
                applied_version=step.version - 1,
            ) from err
        log.info("database %s: applied migration step %d (%s)", db.where, step.version, step.description)
    return code_version
