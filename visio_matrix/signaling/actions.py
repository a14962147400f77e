"""Decisions returned by the signaling state machines (``conference``, ``one_to_one``).

A state machine never does I/O: it returns a list of these values and the async shell in ``calls/``
carries them out in order. Several inputs ask the shell to call back with a result:

- ``JoinConference`` / ``ApplyOffer``: the relay makes an answer SDP, then the shell calls the machine's
  ``answer_ready`` / ``negotiate_answer_ready``;
- ``MakeOffer``: the relay makes an offer SDP, then the shell calls ``send_offer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visio_matrix.signaling.messages import CandidateEntry, StreamMetadataMap


@dataclass(frozen=True)
class SendEvent:
    """Send this event: a room event in 1:1 calls, an Olm to-device message to the participant's device in
    conference calls."""

    event_type: str
    content: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class JoinConference:
    """The remote offered: create its relay participant from ``offer_sdp``, then call ``answer_ready``.

    ``room_id`` / ``conf_id`` are what a conference invite asked for (``conf_id`` "" = the room's active
    conference); both are None in 1:1 calls, where the shell picks the conference."""

    offer_sdp: str
    stream_metadata: StreamMetadataMap | None = field(default=None, hash=False)
    room_id: str | None = None
    conf_id: str | None = None


@dataclass(frozen=True)
class AcceptAnswer:
    """Set ``sdp`` as the remote answer to the relay's pending offer."""

    sdp: str
    stream_metadata: StreamMetadataMap | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ApplyOffer:
    """Renegotiation offered by the remote: apply it (after rolling back the relay's own pending offer when
    ``rollback_local_offer``), then call ``negotiate_answer_ready`` with the relay's answer."""

    sdp: str
    stream_metadata: StreamMetadataMap | None = field(default=None, hash=False)
    rollback_local_offer: bool = False


@dataclass(frozen=True)
class AddCandidates:
    """Remote ICE candidates for the relay participant (end-of-candidates included as given)."""

    candidates: tuple[CandidateEntry, ...]


@dataclass(frozen=True)
class UpdateStreams:
    """The remote's stream metadata changed (purpose, mute state)."""

    stream_metadata: StreamMetadataMap = field(hash=False)


@dataclass(frozen=True)
class MakeOffer:
    """The set of streams the remote receives changed: make a relay offer, then call ``send_offer``."""

    why: str = "streams changed"


@dataclass(frozen=True)
class EndCall:
    """The call is over on our side: drop its relay participant. Any hangup event to send comes as a
    separate ``SendEvent`` before this one."""

    reason: str


@dataclass(frozen=True)
class Ignore:
    """The input had no effect (duplicate, stale, not for us...); ``why`` is for the debug log."""

    why: str


Action = (
    SendEvent
    | JoinConference
    | AcceptAnswer
    | ApplyOffer
    | AddCandidates
    | UpdateStreams
    | MakeOffer
    | EndCall
    | Ignore
)
