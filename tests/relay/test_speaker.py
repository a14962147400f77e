"""Table tests of the active speaker detector (levels in -dBov, 0 = loudest, 127 = silence)."""

from __future__ import annotations

import pytest

from visio_matrix.relay.speaker import ActiveSpeakerDetector, levels_from_mcu

LOUD, TALK, QUIET, SILENT = 10, 30, 60, 127


def feed(
    detector: ActiveSpeakerDetector, start: float, end: float, levels: dict[str, int]
) -> list[tuple[float, str | None]]:
    """Feed 50 packets/s per participant between start and end; return (time, new speaker) changes."""
    changes = []
    t = start
    while t < end - 1e-9:
        for pid, level in levels.items():
            detector.observe(pid, level, t)
        change = detector.evaluate(t)
        if change is not None:
            changes.append((round(t, 2), change.speaker))
        t += 0.02
    return changes


# Each case: list of (start, end, levels) phases; expected list of (approximate time, speaker) changes.
CASES = [
    ("first voice takes the floor at once", [(0, 1, {"a": TALK, "b": SILENT})], [(0.0, "a")]),
    ("nobody loud enough: no speaker", [(0, 2, {"a": QUIET, "b": SILENT})], []),
    (
        "a louder voice takes over once the hold time passed",
        [(0, 1.5, {"a": TALK, "b": SILENT}), (1.5, 4, {"a": SILENT, "b": TALK})],
        [(0.0, "a"), (1.9, "b")],  # b needs ~80 % of the 0.5 s window voiced
    ),
    (
        "a short interjection inside the hold time does not switch",
        [
            (0, 0.3, {"a": TALK, "b": SILENT}),
            (0.3, 0.5, {"a": TALK, "b": LOUD}),
            (0.5, 2, {"a": TALK, "b": SILENT}),
        ],
        [(0.0, "a")],
    ),
    (
        "close levels do not flap (margin)",
        [(0, 5, {"a": TALK, "b": TALK + 2})],
        [(0.0, "a")],
    ),
    (
        "silence keeps the last speaker",
        [(0, 1, {"a": TALK, "b": SILENT}), (1, 4, {"a": SILENT, "b": SILENT})],
        [(0.0, "a")],
    ),
]


@pytest.mark.parametrize(("name", "phases", "expected"), CASES, ids=[c[0] for c in CASES])
def test_active_speaker(
    name: str, phases: list[tuple[float, float, dict[str, int]]], expected: list[tuple[float, str]]
) -> None:
    detector = ActiveSpeakerDetector()
    changes: list[tuple[float, str | None]] = []
    for start, end, levels in phases:
        changes += feed(detector, start, end, levels)
    assert [s for _, s in changes] == [s for _, s in expected], name
    for (t, _), (expected_t, _) in zip(changes, expected, strict=True):
        assert abs(t - expected_t) <= 0.1, f"{name}: change at {t}, expected about {expected_t}"


def test_leaving_speaker_hands_over_or_clears() -> None:
    detector = ActiveSpeakerDetector()
    feed(detector, 0, 1, {"a": TALK, "b": QUIET + 20})
    assert detector.speaker == "a"
    detector.remove("a")
    change = detector.evaluate(1.0)
    assert change is not None and change.speaker is None  # b is below the speech threshold
    feed(detector, 1, 2, {"b": TALK})
    assert detector.speaker == "b"


def test_level_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.127"):
        ActiveSpeakerDetector().observe("a", 128, 0.0)


@pytest.mark.parametrize(
    ("levels", "with_extension", "expected"),
    [
        ({"a": -20.0, "b": -127.0}, set(), {"a": 20, "b": 127}),
        ({"a": -20.4, "b": 3.0}, set(), {"a": 20, "b": 0}),  # clamped to 0..127
        ({"a": -200.0}, set(), {"a": 127}),
        ({"a": -20.0, "b": -30.0}, {"a"}, {"b": 30}),  # the RTP extension wins for a
    ],
)
def test_levels_from_mcu(
    levels: dict[str, float], with_extension: set[str], expected: dict[str, int]
) -> None:
    assert levels_from_mcu(levels, with_extension) == expected
