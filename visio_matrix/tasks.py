"""An owner for background tasks and timers: starts them, cancels and awaits them on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

# A task still running this long after its cancellation is cancelled again. Long enough for the
# cleanups that run on cancellation (a peer connection's close is awaited to its end: seconds).
RECANCEL_S = 10.0


class TaskOwner:
    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        if self._closed:
            return
        handle: asyncio.TimerHandle

        def run() -> None:
            self._timers.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._timers.add(handle)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        current = asyncio.current_task()
        pending = {t for t in self._tasks if t is not current}
        for task in pending:
            task.cancel()
        while pending:
            _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
            for task in pending:
                # A task can miss a cancellation: Python 3.11's asyncio.wait_for returns the inner
                # result when it completes in the same loop turn as the cancel. Cancel it again.
                logger.warning(
                    "task %s still running after its cancellation: cancelling again", task.get_name()
                )
                task.cancel()
