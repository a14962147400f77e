"""Chat command parsing and power-level decisions (pure, table-driven)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from visio_matrix.calls.commands import Command, parse_command
from visio_matrix.calls.policy import may_act, power_level_of


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("!visio", Command("help")),
        ("!visio help", Command("help", (), "help")),
        ("  !VISIO   Start  ", Command("start", (), "Start")),
        ("!visio status", Command("status", (), "status")),
        ("!visio stop now", Command("stop", ("now",), "stop")),
        ("!visio dance", Command("unknown", (), "dance")),
        ("hello !visio start", None),
        ("!visiostart", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_parse_command(body: object, expected: Command | None) -> None:
    assert parse_command(body) == expected


PL = {"users": {"@mod:hs": 50, "@admin:hs": 100, "@weird:hs": "75"}, "users_default": 0}
CREATE_V10 = {"sender": "@creator:hs", "content": {"room_version": "10", "creator": "@creator:hs"}}
CREATE_V12 = {"sender": "@creator:hs", "content": {"room_version": "12", "additional_creators": ["@co:hs"]}}


@pytest.mark.parametrize(
    ("user", "power_levels", "create", "level"),
    [
        ("@mod:hs", PL, CREATE_V10, 50),
        ("@admin:hs", PL, CREATE_V10, 100),
        ("@weird:hs", PL, CREATE_V10, 75),
        ("@nobody:hs", PL, CREATE_V10, 0),
        ("@nobody:hs", {"users_default": 10}, None, 10),
        ("@creator:hs", PL, CREATE_V10, 0),  # v10: the creator's power is what power_levels says
        ("@creator:hs", PL, CREATE_V12, math.inf),  # v12: privileged creator
        ("@co:hs", PL, CREATE_V12, math.inf),
        ("@mod:hs", PL, CREATE_V12, 50),
        ("@creator:hs", None, CREATE_V10, 100),  # no power levels event: creator 100
        ("@other:hs", None, CREATE_V10, 0),
    ],
)
def test_power_level_of(
    user: str, power_levels: dict[str, Any] | None, create: dict[str, Any] | None, level: float
) -> None:
    assert power_level_of(user, power_levels, create) == level


def test_may_act_explains_refusal() -> None:
    decision = may_act("@nobody:hs", 50, PL, CREATE_V10, "Ending a call")
    assert not decision.allowed
    assert decision.reason == "Ending a call needs power level 50 in this room; you have 0"
    assert may_act("@mod:hs", 50, PL, CREATE_V10, "Ending a call").allowed
