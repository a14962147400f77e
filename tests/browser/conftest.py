"""Fixtures of the headless-Chromium tests (see browser_harness.py)."""

from browser_harness import browser, harness_url, pages  # noqa: F401
