"""Typed ``m.call.*`` messages (spec "Voice over IP", MSC2746, MSC3077) and the signaling error.

Pure values: every message is a frozen dataclass built by ``parse.parse_call_content`` from raw
event content, or turned into content by the ``build`` module. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

# Event types (stable names; ``EVENT_TYPE_ALIASES`` maps unstable names still sent by clients).
INVITE: Final = "m.call.invite"
ANSWER: Final = "m.call.answer"
CANDIDATES: Final = "m.call.candidates"
SELECT_ANSWER: Final = "m.call.select_answer"
REJECT: Final = "m.call.reject"
NEGOTIATE: Final = "m.call.negotiate"
HANGUP: Final = "m.call.hangup"
STREAM_METADATA_CHANGED: Final = "m.call.sdp_stream_metadata_changed"
CALL_EVENT_TYPES: Final = frozenset(
    {INVITE, ANSWER, CANDIDATES, SELECT_ANSWER, REJECT, NEGOTIATE, HANGUP, STREAM_METADATA_CHANGED}
)
# matrix-js-sdk (Element Web/Desktop) sends the metadata-changed event under its unstable name.
EVENT_TYPE_ALIASES: Final = {"org.matrix.call.sdp_stream_metadata_changed": STREAM_METADATA_CHANGED}

# Content keys of the stream metadata: the spec's, then matrix-js-sdk's unstable one (what Element sends).
STREAM_METADATA_KEY: Final = "sdp_stream_metadata"
STREAM_METADATA_UNSTABLE_KEY: Final = "org.matrix.msc3077.sdp_stream_metadata"

PURPOSE_USERMEDIA: Final = "m.usermedia"
PURPOSE_SCREENSHARE: Final = "m.screenshare"
STREAM_PURPOSES: Final = frozenset({PURPOSE_USERMEDIA, PURPOSE_SCREENSHARE})

# Hangup reasons listed by the spec (others are accepted on input: clients send more, e.g. "replaced").
SPEC_HANGUP_REASONS: Final = frozenset(
    {
        "ice_failed",
        "ice_timeout",
        "invite_timeout",
        "user_hangup",
        "user_media_failed",
        "user_busy",
        "unknown_error",
    }
)

VERSION_1: Final = "1"
LEGACY_VERSION: Final = "0"  # integer 0 on the wire; normalised to the string "0"


class SignalingError(ValueError):
    """Content that is not a valid call message. ``code`` is stable (for metrics/tests), ``message`` names
    the field, e.g. ``SignalingError("bad_type", "offer.sdp: expected a string")``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignalingError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"SignalingError({self.code!r}, {self.message!r})"


# Error codes of SignalingError.
ERR_NOT_OBJECT: Final = "not_object"
ERR_MISSING: Final = "missing_field"
ERR_BAD_TYPE: Final = "bad_type"
ERR_BAD_VALUE: Final = "bad_value"
ERR_TOO_LARGE: Final = "too_large"
ERR_BAD_VERSION: Final = "bad_version"
ERR_UNKNOWN_TYPE: Final = "unknown_event_type"


@dataclass(frozen=True)
class Limits:
    """Bounds applied while parsing; everything above them is refused with ``too_large``."""

    max_sdp_bytes: int = 64 * 1024
    max_candidates: int = 200
    max_candidate_chars: int = 1024
    max_id_chars: int = 255  # call_id, party_id, conf_id, session ids, device ids (spec grammar: 1..255)
    max_user_id_chars: int = 255  # the spec's bound on user IDs
    max_reason_chars: int = 255
    max_message_chars: int = 1024
    max_streams: int = 64
    max_lifetime_ms: int = 24 * 3600 * 1000


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True)
class StreamMetadata:
    """MSC3077 metadata of one media stream (keyed by the stream id = the SDP msid stream id).

    ``user_id`` / ``device_id``: whose media this is, set by the bot in conference answers/offers
    (an extension; absent in 1:1 calls from ordinary clients)."""

    purpose: str  # one of STREAM_PURPOSES (the parser drops streams with another purpose)
    audio_muted: bool = False
    video_muted: bool = False
    user_id: str | None = None
    device_id: str | None = None


StreamMetadataMap = Mapping[str, StreamMetadata]


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate (``candidate`` is the SDP ``a=`` line value, without ``a=``)."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


@dataclass(frozen=True)
class EndOfCandidates:
    """The spec's end-of-candidates entry ``{"candidate": ""}``: no more candidates will be sent."""

    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


CandidateEntry = Candidate | EndOfCandidates


@dataclass(frozen=True)
class CallInvite:
    call_id: str
    party_id: str | None  # None only for legacy version 0 messages
    version: str  # "1" (or "0": legacy)
    lifetime_ms: int
    offer_sdp: str
    invitee: str | None = None
    stream_metadata: StreamMetadataMap | None = field(default=None, hash=False)


@dataclass(frozen=True)
class CallAnswer:
    call_id: str
    party_id: str | None
    version: str
    answer_sdp: str
    stream_metadata: StreamMetadataMap | None = field(default=None, hash=False)


@dataclass(frozen=True)
class CallCandidates:
    call_id: str
    party_id: str | None
    version: str
    candidates: tuple[CandidateEntry, ...]


@dataclass(frozen=True)
class CallSelectAnswer:
    call_id: str
    party_id: str | None
    version: str
    selected_party_id: str


@dataclass(frozen=True)
class CallReject:
    call_id: str
    party_id: str | None
    version: str


@dataclass(frozen=True)
class CallNegotiate:
    call_id: str
    party_id: str | None
    version: str
    description_type: Literal["offer", "answer"]
    sdp: str
    lifetime_ms: int | None = None  # required for offers by the spec; absent/ignored on answers
    stream_metadata: StreamMetadataMap | None = field(default=None, hash=False)


@dataclass(frozen=True)
class CallHangup:
    call_id: str
    party_id: str | None
    version: str
    reason: str = "user_hangup"  # absent on the wire (version 0) means user_hangup


@dataclass(frozen=True)
class CallStreamMetadataChanged:
    call_id: str
    party_id: str | None
    version: str
    stream_metadata: StreamMetadataMap = field(default_factory=dict, hash=False)


CallMessage = (
    CallInvite
    | CallAnswer
    | CallCandidates
    | CallSelectAnswer
    | CallReject
    | CallNegotiate
    | CallHangup
    | CallStreamMetadataChanged
)

EVENT_TYPE_OF: Final[dict[type, str]] = {
    CallInvite: INVITE,
    CallAnswer: ANSWER,
    CallCandidates: CANDIDATES,
    CallSelectAnswer: SELECT_ANSWER,
    CallReject: REJECT,
    CallNegotiate: NEGOTIATE,
    CallHangup: HANGUP,
    CallStreamMetadataChanged: STREAM_METADATA_CHANGED,
}


def event_type_of(message: CallMessage) -> str:
    """The (stable) event type of a parsed message."""
    return EVENT_TYPE_OF[type(message)]
