"""Fixtures shared by the integration tests: real Synapse homeservers and the service on one
(see synapse_fixtures.py); two or three federating ministries (see federation_fixtures.py)."""

from federation_fixtures import (  # noqa: F401
    ministries,
    ministries_factory,
    three_ministries,
    three_ministries_onward,
)
from synapse_fixtures import SynapseFactory, service, synapse, synapse_factory  # noqa: F401
