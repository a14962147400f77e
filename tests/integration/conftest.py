"""Fixtures shared by the integration tests: real Synapse homeservers (see synapse_fixtures.py)."""

from synapse_fixtures import SynapseFactory, synapse, synapse_factory  # noqa: F401
