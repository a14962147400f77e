"""Fixtures of the headless-Chromium tests (see browser_harness.py), and the real-Synapse fixtures
of tests/integration (synapse_fixtures.py) for the tests that need a homeserver and the service."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from browser_harness import browser, harness_url, pages  # noqa: F401
from synapse_fixtures import service, synapse_factory  # noqa: F401
