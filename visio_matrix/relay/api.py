"""The contract between the call logic and the media relay: options, events, stream metadata, stats.

Like Galene's up-track/down-track interfaces, this is the whole surface the call logic sees; the
aiortc-based implementation sits behind it (``relay.Relay``, ``conference.Conference``).

Signaling model (one RTCPeerConnection per participant, BUNDLE, the relay never trickles: its
offers and answers carry all its candidates):

- the participant offers (LiveKit-style client, 1:1 Matrix call):   ``add_participant(offer=...)``
  returns the answer;
- or the relay offers (MSC3898-style): ``add_participant(offer=None)`` returns the relay's offer
  and the caller later feeds the answer to ``accept_answer``;
- whenever the tracks a participant must receive change, the relay emits ``NegotiationNeeded``
  with a fresh offer; the caller feeds the answer back with ``accept_answer``. A participant's own
  re-offer goes to ``apply_offer`` (returns the answer). While a relay offer is pending, a
  re-offer raises ``NegotiationError`` (answer first, then re-offer);
- a participant that always offers and never answers (LiveKit v1 clients: mode
  ``"sfu_answer_only"``) never gets a relay offer: its ``NegotiationNeeded`` has ``offer_sdp == ""``
  and ``streams`` = what it receives now plus the pending streams, each with the ``mid`` of the
  m-line it offered that the stream will take, or ``mid=None`` when it must add an m-line of that
  kind; the transport asks it to re-offer (LiveKit: ``media_sections_requirement``) and passes the
  re-offer to ``apply_offer``. Its answers send on the m-lines it offered to receive on. It may join
  without an offer (``add_participant`` then returns ``Negotiated("", ())``) and send its first
  offer to ``apply_offer``.

Offered sections with no forwardable codec (or stopped, port 0) are rejected one by one (port 0 in
the relay's SDP); simulcast video is accepted as one layer (``relay/simulcast.py``).

Events are put on ``Relay.events`` (an ``asyncio.Queue[RelayEvent]``, bounded by
``RelayOptions.event_queue_size``; when full the oldest event is dropped and counted in
``Relay.dropped_events``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

# "sfu_answer_only": SFU, and the relay never sends this participant an offer (see above).
ParticipantMode = Literal["sfu", "mcu", "sfu_answer_only"]
MediaKind = Literal["audio", "video"]


@dataclass(frozen=True)
class RelayOptions:
    """How the relay binds and behaves. Times are in seconds."""

    host_addresses: tuple[str, ...]
    udp_port_min: int
    udp_port_max: int
    # A participant must reach ICE+DTLS "connected" within this delay, else ParticipantFailed.
    connect_timeout: float = 20.0
    # Backlog allowed toward one subscriber, in packets of ~1500 bytes (its socket transport's write
    # buffer); above it packets are dropped, so a stalled subscriber never slows the others.
    subscriber_queue_size: int = 512
    # At most one keyframe request per publisher track per this interval.
    keyframe_min_interval: float = 0.5
    # Packets kept per outgoing stream for retransmission on NACK.
    history_size: int = 512
    max_sdp_bytes: int = 64 * 1024
    max_media_sections: int = 64
    event_queue_size: int = 10_000

    def __post_init__(self) -> None:
        if not self.host_addresses:
            raise ValueError("host_addresses must name at least one address")
        if not (1 <= self.udp_port_min <= self.udp_port_max <= 65535):
            raise ValueError(
                f"UDP port range {self.udp_port_min}-{self.udp_port_max} is invalid "
                "(expected 1 <= min <= max <= 65535)"
            )
        for name in ("connect_timeout", "keyframe_min_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "subscriber_queue_size",
            "history_size",
            "max_sdp_bytes",
            "max_media_sections",
            "event_queue_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StreamInfo:
    """One outgoing stream (one m-line) a subscriber receives, for ``sdp_stream_metadata``.

    ``stream_id`` / ``track_id`` are the msid the subscriber sees in the relay's SDP;
    ``publisher_id`` and ``publisher_track_id`` say whose media it carries (the publisher's own
    msid track id when it sent one).
    """

    stream_id: str
    track_id: str
    mid: str | None
    kind: MediaKind
    purpose: str  # "m.usermedia" or "m.screenshare" (taken from the publication)
    publisher_id: str
    publisher_track_id: str
    publisher_metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedTrack:
    """A track a participant sends to the relay."""

    participant_id: str
    track_id: str  # the relay's id for it (the msid track id subscribers see)
    stream_id: str
    kind: MediaKind
    codec: str  # mime type, e.g. "video/VP8"
    purpose: str
    origin_stream_id: str | None  # the publisher's own msid, when given
    origin_track_id: str | None
    # For a link participant's track: the far-side user/device it belongs to (from stream_owners).
    owner: Mapping[str, str] | None = field(default=None, hash=False)


# ---- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackPublished:
    conference_id: str
    track: PublishedTrack


@dataclass(frozen=True)
class TrackUnpublished:
    conference_id: str
    track: PublishedTrack


@dataclass(frozen=True)
class ParticipantConnected:
    conference_id: str
    participant_id: str


@dataclass(frozen=True)
class ParticipantFailed:
    conference_id: str
    participant_id: str
    reason: str


@dataclass(frozen=True)
class ParticipantLeft:
    conference_id: str
    participant_id: str


@dataclass(frozen=True)
class NegotiationNeeded:
    """The relay has a new offer for a participant; feed the answer to ``accept_answer``.

    For a ``sfu_answer_only`` participant ``offer_sdp`` is empty: it must re-offer (see above).
    """

    conference_id: str
    participant_id: str
    offer_sdp: str
    streams: tuple[StreamInfo, ...]


@dataclass(frozen=True)
class ActiveSpeakerChanged:
    conference_id: str
    participant_id: str | None
    # A link's far-side user who speaks (``PublishedTrack.owner`` of the loudest audio), else None.
    owner: Mapping[str, str] | None = field(default=None, hash=False)


RelayEvent = (
    TrackPublished
    | TrackUnpublished
    | ParticipantConnected
    | ParticipantFailed
    | ParticipantLeft
    | NegotiationNeeded
    | ActiveSpeakerChanged
)


# ---- stats ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParticipantStats:
    participant_id: str
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: int = 0  # packets not sent to this subscriber (queue overflow, waiting for a keyframe)
    keyframe_requests_received: int = 0  # PLI/FIR from this participant (as a subscriber)
    keyframe_requests_forwarded: int = 0  # PLI sent to this participant (as a publisher)
    nacks_received: int = 0  # NACKed packets asked by this participant
    retransmissions: int = 0
    rtt_s: float | None = None
    link: bool = False  # another relay (federation), not a user's connection
    metadata: Mapping[str, str] = field(default_factory=dict)  # e.g. user_id / device_id


@dataclass(frozen=True)
class ConferenceStats:
    conference_id: str
    participants: tuple[ParticipantStats, ...]
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    drops: int
    keyframe_requests_received: int
    keyframe_requests_forwarded: int
    nacks_received: int
    retransmissions: int


# ---- the contract ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Negotiated:
    """Result of a signaling step: the relay's SDP and the streams the participant will receive."""

    sdp: str
    streams: tuple[StreamInfo, ...]


class ConferenceApi(Protocol):
    conference_id: str

    async def add_participant(
        self,
        participant_id: str,
        *,
        offer_sdp: str | None = None,
        mode: ParticipantMode = "sfu",
        metadata: Mapping[str, str] | None = None,
        stream_purposes: Mapping[str, str] | None = None,
        link: bool = False,
        allow_onward: bool = False,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
        onward_ok: bool = True,
    ) -> Negotiated:
        """With an offer: returns the answer. Without: returns the relay's offer (see accept_answer).

        ``stream_purposes`` maps the participant's own msid stream ids to a purpose
        ("m.usermedia", "m.screenshare"), as Matrix ``sdp_stream_metadata`` gives it.

        ``link=True``: the participant is another relay (federation, ``relay/links.py``). It
        receives each local publisher's tracks once and, unless ``allow_onward``, nothing published
        by other links; with ``allow_onward`` it receives another link's tracks only if that link
        was added with ``onward_ok=True`` (the default; ``onward_ok=False`` on a non-link is an
        error): a ministry may forbid its streams from going on to a third. ``stream_owners`` (links only) maps its msid stream ids to the far-side
        owner, ``{"user_id": ..., "device_id": ...}``: subscribers see that as
        ``StreamInfo.publisher_metadata`` (and ``PublishedTrack.owner``). Inconsistent or malformed
        link options raise ``InvalidLinkError``.
        """
        ...

    async def apply_offer(
        self,
        participant_id: str,
        offer_sdp: str,
        stream_purposes: Mapping[str, str] | None = None,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Negotiated: ...

    async def accept_answer(
        self,
        participant_id: str,
        answer_sdp: str,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
        onward_ok: bool | None = None,
    ) -> None:
        """``stream_owners``: as for ``add_participant`` (a link's streams in its answer).
        ``onward_ok`` (links only; None: unchanged): whether the far side's policy lets its streams go
        on to other links, which a link the relay offers to learns only from the answer."""
        ...

    async def request_offer(self, participant_id: str, *, add_audio: int = 0, add_video: int = 0) -> None:
        """A fresh relay offer for a participant the relay offers to (mode "sfu"), with ``add_audio``
        / ``add_video`` more ``recvonly`` m-lines: it comes as ``NegotiationNeeded`` even if nothing
        else changed, or once the pending relay offer is answered. Used for a link whose far side
        never offers and needs more sections to send on (``links.sections_needed``). Raises
        ``UnknownParticipantError``, ``NegotiationError`` (answer-only or mcu participant) or
        ``InvalidRequestError`` (negative counts, more than ``max_media_sections`` m-lines).
        """
        ...

    async def add_ice_candidate(
        self,
        participant_id: str,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """``candidate`` is the SDP "candidate:..." line; None means end-of-candidates."""
        ...

    async def remove_participant(self, participant_id: str) -> None: ...

    async def subscribe(self, subscriber_id: str, publisher_id: str) -> None: ...

    async def unsubscribe(self, subscriber_id: str, publisher_id: str) -> None: ...

    def streams_for(self, participant_id: str) -> tuple[StreamInfo, ...]: ...

    def published_tracks(self) -> tuple[PublishedTrack, ...]: ...

    def participant_ids(self) -> tuple[str, ...]: ...

    def stats(self) -> ConferenceStats: ...

    async def close(self) -> None: ...


class RelayApi(Protocol):
    async def create_conference(self, conference_id: str) -> ConferenceApi: ...

    def conference(self, conference_id: str) -> ConferenceApi: ...

    async def close_conference(self, conference_id: str) -> None: ...

    async def close(self) -> None: ...
