"""Suite-wide reporting: how many tests ran against each real part (Synapse, PostgreSQL, media)."""

from __future__ import annotations

from collections import Counter

import pytest

REAL_PARTS = {
    "synapse": "real Synapse homeserver",
    "postgres": "real PostgreSQL",
    "media": "real aiortc peers exchanging media",
    "browser": "real headless Chromium",
}

_outcomes: Counter[tuple[str, str]] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    for mark in REAL_PARTS:
        if mark in report.keywords:
            _outcomes[(mark, report.outcome)] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("real parts")
    for mark, what in REAL_PARTS.items():
        counts = {o: _outcomes[(mark, o)] for o in ("passed", "failed", "skipped") if _outcomes[(mark, o)]}
        summary = ", ".join(f"{n} {o}" for o, n in counts.items()) or "none ran"
        terminalreporter.write_line(f"{what:40s} {summary}")
