"""The contract between the conference hub and the transports that bring participants in.

A room has one conference, whichever way each participant arrives. Each way in is a *transport*:
Matrix-native to-device signaling (``calls.todevice``), a 1:1 ``m.call.*`` call in the user's DM with
the bot (``calls.dm_calls``), the LiveKit-compatible focus (``focus/``), links to other ministries'
relays (``calls.federation``), later SIP. A transport verifies who the participant is, then asks the hub (``calls.hub.ConferenceHub``)
to admit them; the hub checks that they are a member of the room, creates or finds the room's
conference, and drives the relay. For each participant the transport hands the hub a
:class:`ParticipantLink`: the hub calls it back when the relay has a new offer for that participant,
when the participant is removed (left the room, kicked, call stopped, media failed), and with every
change of the conference (who is in, which tracks are published) so that transports that announce
other participants (LiveKit ``update`` messages, ``sdp_stream_metadata``) can do so.

Only the owning transport speaks to its participant; the hub never sends Matrix events itself
(the room notices come from ``calls.room_status``, which listens to the hub like a transport).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from visio_matrix.relay.api import Negotiated, ParticipantMode, PublishedTrack

TransportName = Literal["todevice", "dm", "livekit", "federation", "guest"]


GUEST_USER_PREFIX = "guest:"


@dataclass(frozen=True)
class Identity:
    """Who a participant is, as verified by its transport (never taken from message content).

    ``device_id`` is the Matrix device (to-device signaling, LiveKit identity) or a transport-specific
    stable id (a DM call's call id).
    """

    user_id: str
    device_id: str
    display_name: str | None = None


@dataclass(frozen=True)
class ParticipantView:
    participant_id: str
    conference_id: str
    room_id: str
    identity: Identity
    transport: TransportName
    joined_at_ms: int
    connected: bool
    # Set for another ministry's relay (federation link): the far homeserver's server name.
    link_server: str | None = None


@dataclass(frozen=True)
class Joined:
    participant_id: str
    conference_id: str
    room_id: str
    negotiated: Negotiated  # the relay's answer (participant offered) or offer (it did not)


@dataclass(frozen=True)
class RelayLinkOptions:
    """The joining participant is another ministry's relay (federation, ``calls.federation``).

    Its identity is the far ministry's bot (user and device); the hub checks that bot is in the room
    but not ``policy.allowed_servers`` (the transport checked ``policy.link_servers`` and the bot's
    keys). The relay gives it the link role (``relay/links.py``).
    """

    server_name: str  # the far homeserver
    allow_onward: bool = False  # it may receive what other links bring (our policy.relay_onwards)
    onward_ok: bool = False  # what it brings may go on to other links (its side's policy allows)
    stream_owners: Mapping[str, Mapping[str, str]] | None = None  # its msid streams -> far-side user


# ---- what the hub tells everyone about a conference -------------------------------------------------


@dataclass(frozen=True)
class ParticipantJoined:
    room_id: str
    conference_id: str
    participant: ParticipantView


@dataclass(frozen=True)
class ParticipantConnectedEvent:
    room_id: str
    conference_id: str
    participant: ParticipantView


@dataclass(frozen=True)
class ParticipantRemoved:
    room_id: str
    conference_id: str
    participant: ParticipantView
    reason: str  # a RemovalReason value


@dataclass(frozen=True)
class TrackAdded:
    room_id: str
    conference_id: str
    track: PublishedTrack
    owner: ParticipantView


@dataclass(frozen=True)
class TrackRemoved:
    room_id: str
    conference_id: str
    track: PublishedTrack
    owner: ParticipantView


@dataclass(frozen=True)
class SpeakerChanged:
    room_id: str
    conference_id: str
    participant_id: str | None
    # When ``participant_id`` is a link: which of its far-side users speaks ({"user_id", "device_id"}).
    owner: Mapping[str, str] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ConferenceStarted:
    room_id: str
    conference_id: str
    started_by: str
    started_at_ms: int


@dataclass(frozen=True)
class ConferenceEnded:
    room_id: str
    conference_id: str
    ended_by: str
    started_at_ms: int
    ended_at_ms: int
    participants: tuple[str, ...] = field(default_factory=tuple)  # user ids who took part, in join order


LinkState = Literal["connecting", "linked", "unreachable", "refused", "closed"]
LINK_STATES: tuple[LinkState, ...] = ("connecting", "linked", "unreachable", "refused", "closed")


@dataclass(frozen=True)
class LinkStatusChanged:
    """A federation link of the room's call changed state (announced by ``calls.federation``).

    ``remote``: the far side's participants as its bot last reported them (empty unless linked).
    """

    room_id: str
    conference_id: str
    server_name: str
    state: LinkState
    since_ms: int
    detail: str = ""
    remote: tuple[Identity, ...] = ()


HubEvent = (
    ParticipantJoined
    | ParticipantConnectedEvent
    | ParticipantRemoved
    | TrackAdded
    | TrackRemoved
    | SpeakerChanged
    | ConferenceStarted
    | ConferenceEnded
    | LinkStatusChanged
)


class RemovalReason:
    """Why the hub removed a participant (``ParticipantRemoved.reason``, ``ParticipantLink.closed``)."""

    LEFT = "left"  # the participant hung up / left through its transport
    NOT_A_MEMBER = "not_a_member"  # left the room, was kicked or banned
    CONFERENCE_ENDED = "conference_ended"  # !visio stop, or the service ended it
    MEDIA_FAILED = "media_failed"  # ICE/DTLS failed or timed out
    REPLACED = "replaced"  # the same identity joined again (new session)
    SHUTDOWN = "shutdown"  # the service is stopping (participants come back after restart)


class ParticipantLink(Protocol):
    """The transport's handle on one participant, called by the hub (never concurrently for one link)."""

    async def send_offer(self, negotiated: Negotiated) -> None:
        """The relay has a new offer for this participant; the transport sends it and later calls
        ``ConferenceHub.accept_answer`` with the participant's answer."""
        ...

    async def closed(self, reason: str) -> None:
        """The hub removed this participant (``RemovalReason``); tell the participant (hangup/leave)."""
        ...


class HubListener(Protocol):
    async def on_hub_event(self, event: HubEvent) -> None:
        """Called in order for every event; must return quickly (queue any network work)."""
        ...


class HubError(Exception):
    """A join or signaling step refused; ``code`` is stable (used in hangup reasons), ``str()`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class HubApi(Protocol):
    """What transports use. Implemented by ``calls.hub.ConferenceHub``."""

    async def join(
        self,
        room_id: str,
        identity: Identity,
        link: ParticipantLink,
        *,
        transport: TransportName,
        offer_sdp: str | None = None,
        mode: ParticipantMode = "sfu",
        stream_purposes: Mapping[str, str] | None = None,
        start_if_none: bool = False,
        transport_data: Mapping[str, str] | None = None,
        session_key: str | None = None,
        guest: bool = False,
        relay_link: RelayLinkOptions | None = None,
    ) -> Joined:
        """Admit ``identity`` into ``room_id``'s conference.

        ``relay_link``: the participant is another ministry's relay (``RelayLinkOptions``).

        ``guest``: a guest admitted from the lobby (``identity.user_id`` is ``guest:<guest_id>``): the
        membership and server policy checks are skipped (code ``bad_guest`` for another user id).

        Raises ``HubError`` with code ``not_a_member`` (identity.user_id is not joined to the room),
        ``no_conference`` (no active conference and ``start_if_none`` is False), ``server_not_allowed``,
        ``bad_sdp`` (the relay refused the offer). If the same identity (user and device) is already in,
        the old participant is removed first (reason ``replaced``); ``session_key`` (default: the
        device id) narrows that: only a join with the same user and key replaces (a LiveKit client may
        hold two connections with different LiveKit identities from one device). ``transport_data`` is stored with
        the participant and handed back after a restart (``ConferenceHub.take_restorable``).
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
        """``stream_owners``: a link's streams in its answer (who each far-side stream belongs to);
        ``onward_ok``: whether the far side lets them go on to a third ministry (None: unchanged)."""
        ...

    async def add_ice_candidate(
        self,
        participant_id: str,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None: ...

    async def leave(self, participant_id: str, reason: str = RemovalReason.LEFT) -> None:
        """The participant left through its transport. ``closed`` is NOT called back for it."""
        ...

    def participant(self, participant_id: str) -> ParticipantView | None: ...

    def participants(self, room_id: str) -> tuple[ParticipantView, ...]: ...

    def published_tracks(self, room_id: str) -> tuple[tuple[PublishedTrack, ParticipantView], ...]: ...

    def add_listener(self, listener: HubListener) -> None: ...
