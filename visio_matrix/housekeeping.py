"""Periodic clean-up: forgets processed transaction and event IDs once no homeserver can retry them.

Homeservers retry a transaction for minutes (Synapse backs off up to ~512 s), so IDs are kept for
``retention`` (a week by default) and pruned every ``interval``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from visio_matrix.clock import Clock
from visio_matrix.tasks import TaskOwner

log = logging.getLogger(__name__)

WEEK_S = 7 * 24 * 3600.0


class PrunableStore(Protocol):
    async def prune(self, older_than_ms: int) -> int: ...


class Housekeeping:
    def __init__(
        self, store: PrunableStore, clock: Clock, retention: float = WEEK_S, interval: float = 3600.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._interval = interval
        self._tasks = TaskOwner("housekeeping")

    async def run_once(self) -> int:
        removed = await self._store.prune(self._clock.wall_ms() - int(self._retention * 1000))
        if removed:
            log.info(
                "pruned %d processed transaction/event IDs older than %.0f days",
                removed,
                self._retention / 86400,
            )
        return removed

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("housekeeping failed; will try again")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._tasks.spawn(self._loop(), "prune")

    async def stop(self) -> None:
        await self._tasks.close()
