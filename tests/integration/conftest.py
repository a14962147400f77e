"""Fixtures shared by the integration tests: real Synapse homeservers and the service on one
(see synapse_fixtures.py)."""

from synapse_fixtures import SynapseFactory, service, synapse, synapse_factory  # noqa: F401
