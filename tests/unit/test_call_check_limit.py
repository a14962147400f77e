"""The demo's call check always ends: ``run_call_within`` turns a check that outlives its limit into
``CheckTimeout``, and leaves a step's own timeout as it is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from visio_matrix.devstack import call_check


async def test_a_check_that_hangs_ends_at_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hangs(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(call_check, "run_call", hangs)
    with pytest.raises(call_check.CheckTimeout, match="not done within 0 s"):
        await call_check.run_call_within(0.05, "url")


async def test_a_step_s_own_timeout_is_not_mistaken_for_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    async def step_times_out(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("no answer from the bot within 30 s")

    monkeypatch.setattr(call_check, "run_call", step_times_out)
    with pytest.raises(TimeoutError, match="no answer from the bot") as caught:
        await call_check.run_call_within(60, "url")
    assert not isinstance(caught.value, call_check.CheckTimeout)
