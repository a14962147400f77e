"""Errors the relay raises to its caller (the call logic), grouped by cause.

Every error is a ``RelayError``; the message says precisely what was wrong so that the call logic can
log it or send it back to the peer that caused it.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error raised by the relay API."""


class InvalidSdpError(RelayError):
    """A peer's SDP could not be parsed or breaks a rule the relay enforces (size, fingerprint, ...)."""


class UnsupportedCodecError(RelayError):
    """A media section offers no codec the relay can forward (Opus, VP8, H264)."""


class InvalidCandidateError(RelayError):
    """A trickled ICE candidate could not be parsed or matched to a media section."""


class NegotiationError(RelayError):
    """An offer/answer arrived in the wrong signaling state (e.g. an answer with no offer pending)."""


class InvalidLinkError(RelayError):
    """Relay-link options are inconsistent (e.g. ``stream_owners`` on a non-link) or malformed."""


class InvalidRequestError(RelayError):
    """A request's arguments are out of range (e.g. a negative or too large number of m-lines)."""


class UnknownParticipantError(RelayError):
    """The participant id is not (or no longer) in the conference."""


class DuplicateParticipantError(RelayError):
    """A participant with this id is already in the conference."""


class UnknownConferenceError(RelayError):
    """The conference id is not (or no longer) known to the relay."""


class ClosedError(RelayError):
    """The relay or conference is closed."""


class PortRangeExhaustedError(RelayError):
    """No free UDP port is left in the configured range on a configured host address."""
