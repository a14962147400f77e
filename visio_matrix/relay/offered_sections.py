"""Sending on m-lines the participant offered, for participants the relay never sends offers to.

LiveKit v1 clients (one peer connection) always offer and never answer: to receive media they offer
``recvonly`` m-lines (three audio and three video in their first offer, more when asked with
``media_sections_requirement``), and the relay answers ``sendonly`` on them. A participant added
with ``mode="sfu_answer_only"`` works that way:

::

    tracks to receive change --> NegotiationNeeded(offer_sdp="", streams=placed + pending)
        transport asks the participant to re-offer (adding one m-line per pending stream whose mid
        is None) --> apply_offer(re-offer) --> pending streams placed on free m-lines --> answer

A *free* m-line: offered by the participant to receive only, never used by the relay to send or to
receive (aiortc cannot hand a started sender's RTP state to another track), not rejected. An m-line
the relay stopped sending on stays inactive for good, like the relay's own m-lines (docs/relay.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from aiortc import RTCRtpTransceiver

from . import aiortc_hooks as hooks
from .api import StreamInfo
from .codec_policy import capabilities_matching
from .forwarding import UpTrack
from .participant import Participant

logger = logging.getLogger(__name__)

Attach = Callable[[Participant, UpTrack, RTCRtpTransceiver], None]


def free_sections(p: Participant) -> list[RTCRtpTransceiver]:
    """The participant's m-lines the relay may start sending on, in m-line order."""
    return [
        t
        for t in p.pc.getTransceivers()
        if t.mid is not None
        and t not in p.down_transceivers
        and t not in p.ups
        and t not in p.mix_transceivers
        and t.mid not in p.rejected
        and hooks.offer_direction(t) == "sendonly"
        and not hooks.sender_started(t.sender)
    ]


def missing(p: Participant, desired: Sequence[UpTrack]) -> list[UpTrack]:
    return [up for up in desired if up not in p.downs and up not in p.unplaceable]


def place(p: Participant, desired: Sequence[UpTrack], attach: Attach) -> None:
    """Put each desired up track without a down track on a free m-line of its kind and codec."""
    free = free_sections(p)
    for up in missing(p, desired):
        candidates = [t for t in free if t.kind == up.info.kind]
        if not candidates:
            continue  # the participant must add an m-line (pending, mid None)
        preferences = capabilities_matching(up.info.kind, up.codec)
        chosen = next((t for t in candidates if hooks.pin_codecs(t, preferences)), None)
        if chosen is None:
            # Offered m-lines of this kind lack the publisher's codec: asking for more would not help.
            logger.warning(
                "participant %s offers no m-line with %s: it will not receive %s",
                p.id,
                up.codec.mimeType,
                up.info.track_id,
            )
            p.unplaceable.add(up)
            continue
        free.remove(chosen)
        attach(p, up, chosen)


def pending_streams(
    p: Participant, desired: Sequence[UpTrack], info: Callable[[UpTrack], StreamInfo]
) -> tuple[StreamInfo, ...]:
    """Streams waiting for the participant's next offer: with the mid of the free m-line each will
    take, or mid None when the participant must add one."""
    free = free_sections(p)
    out = []
    for up in missing(p, desired):
        section = next((t for t in free if t.kind == up.info.kind), None)
        if section is not None:
            free.remove(section)
        out.append(replace(info(up), mid=section.mid if section is not None else None))
    return tuple(out)


def reoffer_key(p: Participant, desired: Sequence[UpTrack]) -> frozenset[tuple[str, str]] | None:
    """What a re-offer request is for (None: nothing to change). A request is not repeated for the
    same key, so a participant that re-offers without the m-lines asked for is not asked forever."""
    wanted = [("add", up.info.track_id) for up in missing(p, desired)]
    stale = [("remove", up.info.track_id) for up in p.downs if up not in desired]
    return frozenset(wanted + stale) or None
