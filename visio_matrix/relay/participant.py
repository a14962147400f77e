"""One participant of a conference: its RTCPeerConnection, its up/down tracks and its send budget.

Negotiation state (one peer connection, relay and participant both offer)::

    stable --relay offer (NegotiationNeeded)--> have-local-offer --accept_answer--> stable
    stable --participant offer (apply_offer)--> answer returned  --------------> stable

Down tracks (m-lines the relay sends) are only created right before the relay makes an offer, so
a participant's offer never lands on a relay-created m-line. A participant that always offers
(``answer_only``, LiveKit v1 clients) never gets relay offers: its down tracks go on m-lines it
offered to receive on (``offered_sections``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver
from aiortc import sdp as aiortc_sdp

from . import aiortc_hooks as hooks
from .api import ParticipantMode, ParticipantStats
from .forwarding import Counters, DownTrack, SubscriberWriter, UpTrack
from .sdp_sections import RejectedSection


@dataclass(frozen=True)
class RemoteMsid:
    stream_id: str | None
    track_id: str | None


class Participant:
    def __init__(
        self,
        participant_id: str,
        mode: ParticipantMode,
        metadata: Mapping[str, str],
        addresses: tuple[str, ...],
        ports: hooks.PortRange,
        queue_size: int,
    ) -> None:
        self.id = participant_id
        self.mode = mode
        self.metadata = dict(metadata)
        # max-bundle: every m-line on one transport from the start. With aiortc's default
        # ("balanced") a second m-line of a kind in the first offer stays on a transport that
        # BUNDLE then discards, and its sender never starts.
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pc = hooks.restrict_ice(RTCPeerConnection(config), addresses, ports)
        self.counters = Counters()
        self.ups: dict[RTCRtpTransceiver, UpTrack] = {}
        self.downs: dict[UpTrack, DownTrack] = {}
        self.down_transceivers: dict[RTCRtpTransceiver, DownTrack | None] = {}
        self.mix_transceivers: set[RTCRtpTransceiver] = set()
        self.rejected: dict[str, RejectedSection] = {}  # mid -> a section the relay answers with port 0
        self.answer_only = False
        self.unplaceable: set[UpTrack] = set()  # answer_only: no offered m-line has the codec
        self.reoffer_pending = False  # answer_only: a re-offer was asked for and has not come yet
        self.reoffer_key: frozenset[tuple[str, str]] | None = None  # what the last request was for
        self.stream_purposes: dict[str, str] = {}
        self.link = False  # another relay (links.py): receives local publishers only, unless allow_onward
        self.allow_onward = False
        self.onward_ok = True  # link: its tracks may go on to links that allow_onward
        self.extra_recv: dict[str, int] = {"audio": 0, "video": 0}  # recvonly m-lines for the next offer
        self.stream_owners: dict[str, dict[str, str]] = {}  # link: msid stream id -> owner metadata
        self.negotiated_once = False
        self.needs_offer = False
        self.connected = asyncio.Event()
        self.watch_task: asyncio.Task[None] | None = None  # the connect timeout
        self.closed = False
        self._closing: asyncio.Future[None] | None = None
        self.writer = SubscriberWriter(self.counters, queue_size)

    @property
    def signaling_state(self) -> str:
        return self.pc.signalingState

    def remote_msids(self) -> dict[str, RemoteMsid]:
        """mid -> the msid the participant gave each of its m-lines."""
        remote = self.pc.remoteDescription
        if remote is None:
            return {}
        result = {}
        for media in aiortc_sdp.SessionDescription.parse(remote.sdp).media:
            stream_id = track_id = None
            if media.msid:
                bits = media.msid.split()
                stream_id = bits[0]
                track_id = bits[1] if len(bits) > 1 else None
            if media.rtp.muxId:
                result[media.rtp.muxId] = RemoteMsid(stream_id, track_id)
        return result

    def stats(self) -> ParticipantStats:
        rtts = [rtt for down in self.downs.values() if (rtt := hooks.sender_rtt(down.sender)) is not None]
        c = self.counters
        return ParticipantStats(
            participant_id=self.id,
            packets_in=c.packets_in,
            bytes_in=c.bytes_in,
            packets_out=c.packets_out,
            bytes_out=c.bytes_out,
            drops=c.drops,
            keyframe_requests_received=c.keyframe_requests_received,
            keyframe_requests_forwarded=c.keyframe_requests_forwarded,
            nacks_received=c.nacks_received,
            retransmissions=c.retransmissions,
            rtt_s=sum(rtts) / len(rtts) if rtts else None,
            link=self.link,
            metadata=dict(self.metadata),
        )

    async def close(self) -> None:
        self.closed = True
        # aiortc's close() may already be running (it closes itself when the peer closes DTLS) and a
        # second close() awaits the first one's future: cancelling that await would cancel the
        # future and break aiortc's close. So the close runs in its own task, shielded, and is
        # always awaited to the end.
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.pc.close())
        try:
            await asyncio.shield(self._closing)
        except asyncio.CancelledError:
            await self._closing
            raise
