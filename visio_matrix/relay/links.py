"""Relay-to-relay links (federation, docs/federation.md): who receives what, and who owns a stream.

On a relay, another ministry's relay is ONE participant with the *link* role. It receives every
track of the local (non-link) publishers once, however many subscribers the far side has; by
default it receives nothing that arrived over another link (no onward relaying to a third ministry;
``allow_onward`` lifts that, per receiving link, for the tracks of links added with ``onward_ok``). The tracks it publishes belong to the far side's users:
``stream_owners`` maps each of its msid stream ids to ``{"user_id": ..., "device_id": ...}``, which
becomes the track's ``PublishedTrack.owner`` and the ``publisher_metadata`` its subscribers see.

Signaling between two relays (one link, one conference): the side that invites offers (its link
participant has mode "sfu"), the other answers and never offers ("sfu_answer_only"). When the
answering side needs more m-lines to send its users' streams, its ``NegotiationNeeded`` lists
them with ``mid=None``; ``sections_needed`` counts them per kind and the offering side's
``request_offer(add_audio=..., add_video=...)`` adds them to a fresh offer. ``owners_of`` turns the
streams one side sends into the ``stream_owners`` the other side is given.

Pure rules over participants; ``conference.Conference`` applies them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .api import StreamInfo
from .errors import InvalidLinkError
from .forwarding import UpTrack
from .participant import Participant

MAX_OWNER_FIELD = 255  # a Matrix user id is at most 255 bytes


def check_role(
    participant_id: str,
    mode: str,
    link: bool,
    allow_onward: bool,
    stream_owners: object,
    onward_ok: bool = True,
) -> dict[str, dict[str, str]]:
    """The parsed stream-owner map of a new participant, or ``InvalidLinkError`` before anything changes."""
    if not link:
        if allow_onward:
            raise InvalidLinkError(f"participant {participant_id!r}: allow_onward needs link=True")
        if not onward_ok:
            raise InvalidLinkError(f"participant {participant_id!r}: onward_ok=False needs link=True")
        return check_owners(participant_id, False, stream_owners)
    if mode == "mcu":
        raise InvalidLinkError(f"participant {participant_id!r}: a link cannot use mode 'mcu'")
    return check_owners(participant_id, True, stream_owners)


def check_owners(participant_id: str, link: bool, stream_owners: object) -> dict[str, dict[str, str]]:
    """Parses ``stream_owners`` (msid stream id -> {"user_id", "device_id"?, ...}); only links have any."""
    if stream_owners is None:
        return {}
    if not link:
        raise InvalidLinkError(
            f"participant {participant_id!r}: stream_owners is only for link participants (link=True)"
        )
    if not isinstance(stream_owners, Mapping):
        raise InvalidLinkError(f"participant {participant_id!r}: stream_owners must be a mapping")
    owners: dict[str, dict[str, str]] = {}
    for stream_id, owner in stream_owners.items():
        where = f"participant {participant_id!r}: stream_owners[{stream_id!r}]"
        if not isinstance(stream_id, str) or not stream_id:
            raise InvalidLinkError(f"{where}: the msid stream id must be a non-empty string")
        if not isinstance(owner, Mapping):
            raise InvalidLinkError(f"{where} must be a mapping such as {{'user_id': ..., 'device_id': ...}}")
        for key, value in owner.items():
            if not isinstance(key, str) or not isinstance(value, str) or len(value) > MAX_OWNER_FIELD:
                raise InvalidLinkError(f"{where}: {key!r} must map a string to a string of at most 255 chars")
        if not owner.get("user_id"):
            raise InvalidLinkError(f"{where} has no user_id")
        owners[stream_id] = dict(owner)
    return owners


def receives_from(subscriber: Participant, publisher: Participant) -> bool:
    """Whether the roles let ``subscriber`` receive ``publisher``'s tracks (subscriptions aside): a
    link gets another link's tracks only if it allows onward relaying and the publisher permits it."""
    if not (subscriber.link and publisher.link):
        return True
    return subscriber.allow_onward and publisher.onward_ok


def desired_ups(
    p: Participant, participants: Iterable[Participant], denied: set[tuple[str, str]]
) -> list[UpTrack]:
    """The up tracks ``p`` should receive: each other open publisher's, once, unless unsubscribed or
    the link rules above say no."""
    if p.mode != "sfu":
        return []
    return [
        up
        for q in participants
        if q is not p and not q.closed and (p.id, q.id) not in denied and receives_from(p, q)
        for up in q.ups.values()
    ]


def stream_info(up: UpTrack, publisher: Participant | None) -> StreamInfo:
    """What a subscriber is told about ``up``: a link's track names its owner, not the link."""
    if up.info.owner is not None:
        metadata = dict(up.info.owner)
    else:
        metadata = dict(publisher.metadata) if publisher is not None else {}
    return StreamInfo(
        stream_id=up.info.stream_id,
        track_id=up.info.track_id,
        mid=None,
        kind=up.info.kind,
        purpose=up.info.purpose,
        publisher_id=up.info.participant_id,
        publisher_track_id=up.info.origin_track_id or up.info.track_id,
        publisher_metadata=metadata,
    )


def sections_needed(streams: Iterable[StreamInfo]) -> tuple[int, int]:
    """(audio, video): the m-lines an answer-only participant must add, from its ``NegotiationNeeded``
    streams (those with ``mid=None``)."""
    audio = sum(1 for s in streams if s.mid is None and s.kind == "audio")
    video = sum(1 for s in streams if s.mid is None and s.kind == "video")
    return audio, video


def owners_of(streams: Iterable[StreamInfo]) -> dict[str, dict[str, str]]:
    """The ``stream_owners`` for the far relay: each sent stream's msid stream id -> its publisher's
    metadata; streams whose publisher has no ``user_id`` are left out (the link's metadata applies)."""
    return {s.stream_id: dict(s.publisher_metadata) for s in streams if s.publisher_metadata.get("user_id")}
