"""TaskOwner.close() ends every task it owns, even one that missed its cancellation (Python 3.11's
asyncio.wait_for returns the inner result when it completes in the same loop turn as the cancel:
a service's stop then waited forever)."""

from __future__ import annotations

import asyncio

import pytest

from visio_matrix import tasks
from visio_matrix.tasks import TaskOwner


async def test_a_task_that_misses_its_cancellation_is_cancelled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_S", 0.2)
    owner = TaskOwner("test")
    missed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            missed.set()  # what wait_for does in that case: carry on as if nothing happened
        await asyncio.sleep(30)

    task = owner.spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)
    await asyncio.wait_for(owner.close(), 5)
    assert missed.is_set() and task is not None and task.cancelled()


async def test_close_cancels_and_awaits_every_task_and_spawns_nothing_after() -> None:
    owner = TaskOwner("test")
    tasks = [owner.spawn(asyncio.sleep(30), f"sleep{i}") for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(owner.close(), 5)
    assert all(t is not None and t.cancelled() for t in tasks)
    assert owner.spawn(asyncio.sleep(30), "late") is None
