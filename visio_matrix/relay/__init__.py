"""The aiortc media relay: RTP forwarding without transcoding (SFU), MCU wiring, active speaker.

The contract the call logic uses is in ``api`` (options, events, stream metadata, stats) and
``errors``; ``Relay`` implements it. ``restrict_ice`` makes any RTCPeerConnection (test peers,
future clients) gather host candidates only on given addresses, e.g. 127.0.0.1.
See docs/relay.md.
"""

from .aiortc_hooks import PortRange, restrict_ice
from .api import (
    ActiveSpeakerChanged,
    ConferenceStats,
    Negotiated,
    NegotiationNeeded,
    ParticipantConnected,
    ParticipantFailed,
    ParticipantLeft,
    ParticipantMode,
    ParticipantStats,
    PublishedTrack,
    RelayEvent,
    RelayOptions,
    StreamInfo,
    TrackPublished,
    TrackUnpublished,
)
from .conference import Conference
from .errors import RelayError
from .relay import Relay

__all__ = [
    "ActiveSpeakerChanged",
    "Conference",
    "ConferenceStats",
    "Negotiated",
    "NegotiationNeeded",
    "ParticipantConnected",
    "ParticipantFailed",
    "ParticipantLeft",
    "ParticipantMode",
    "ParticipantStats",
    "PortRange",
    "PublishedTrack",
    "Relay",
    "RelayError",
    "RelayEvent",
    "RelayOptions",
    "StreamInfo",
    "TrackPublished",
    "TrackUnpublished",
    "restrict_ice",
]
