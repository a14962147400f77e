"""Reference client library: join a room's visio conference from Python (matrix-nio + aiortc).

A client, not part of the service: it imports aiortc and nio, and nothing of ``relay`` or ``calls``.
``ConferenceClient`` (``session``) is one participant's call; ``login_client`` (``matrix``) gives a
logged-in, syncing E2EE nio client to run it on; ``RemoteTrack`` (``tracks``) names received media.
"""

from visio_matrix.client.matrix import (
    DiscoveryError,
    Focus,
    MatrixClientError,
    VisioMatrixClient,
    find_focus_device,
    login_client,
)
from visio_matrix.client.session import CallHungUp, ConferenceClient, ConferenceError, JoinTimeout
from visio_matrix.client.tracks import RemoteTrack, RemoteTracks

__all__ = [
    "CallHungUp",
    "ConferenceClient",
    "ConferenceError",
    "DiscoveryError",
    "Focus",
    "JoinTimeout",
    "MatrixClientError",
    "RemoteTrack",
    "RemoteTracks",
    "VisioMatrixClient",
    "find_focus_device",
    "login_client",
]
