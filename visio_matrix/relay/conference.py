"""A conference: who publishes what, who receives what, and the signaling with each participant.

Implements ``api.ConferenceApi``. Signaling operations are serialized by one lock per conference;
the media path (``forwarding``) never takes it. After every operation ``_reconcile`` compares, for
each subscriber, the up tracks it should receive with the down tracks it has, and sends a new
offer (``NegotiationNeeded``) where they differ; a participant that always offers (mode
``sfu_answer_only``) is asked to re-offer instead (``offered_sections``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from aiortc import RTCIceCandidate, RTCRtpTransceiver, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ..clock import Clock
from ..tasks import TaskOwner
from . import aiortc_hooks as hooks
from . import links, offered_sections
from .api import (
    ActiveSpeakerChanged,
    ConferenceStats,
    Negotiated,
    NegotiationNeeded,
    ParticipantConnected,
    ParticipantFailed,
    ParticipantLeft,
    ParticipantMode,
    PublishedTrack,
    RelayEvent,
    RelayOptions,
    StreamInfo,
    TrackPublished,
    TrackUnpublished,
)
from .codec_policy import capabilities_matching, prefer_forwardable, translate_error
from .conference_mcu import ConferenceMcu
from .errors import (
    ClosedError,
    DuplicateParticipantError,
    InvalidCandidateError,
    InvalidLinkError,
    InvalidRequestError,
    NegotiationError,
    RelayError,
    UnknownParticipantError,
)
from .forwarding import DownTrack, UpTrack
from .participant import Participant
from .sdp_check import CheckedSdp, check_remote_sdp
from .sdp_sections import write_rejected
from .simulcast import answer_simulcast
from .speaker import ActiveSpeakerDetector

logger = logging.getLogger(__name__)

SPEAKER_EVAL_INTERVAL = 0.1


class Conference:
    def __init__(
        self,
        conference_id: str,
        options: RelayOptions,
        clock: Clock,
        ports: hooks.PortRange,
        emit: Callable[[RelayEvent], None],
    ) -> None:
        self.conference_id = conference_id
        self._options = options
        self._clock = clock
        self._ports = ports
        self._emit = emit
        self._participants: dict[str, Participant] = {}
        self._denied: set[tuple[str, str]] = set()  # (subscriber, publisher)
        self._lock = asyncio.Lock()
        self._tasks = TaskOwner(f"conference:{conference_id}")
        self._speaker = ActiveSpeakerDetector()
        self._last_speaker_eval = 0.0
        self._mcu: ConferenceMcu | None = None
        self._level_ext_seen: set[str] = set()  # participants whose audio carries RFC 6464 levels
        # The speaker detector's key for each far-side user's audio on a link -> (link id, owner): a
        # link carries several people, each a speaker of their own.
        self._owner_keys: dict[str, tuple[str, dict[str, str]]] = {}
        self._closed = False

    # ---- API ------------------------------------------------------------------------------------

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
        async with self._lock:
            self._check_open()
            if participant_id in self._participants:
                raise DuplicateParticipantError(
                    f"participant {participant_id!r} is already in the conference"
                )
            if mode not in ("sfu", "mcu", "sfu_answer_only"):
                raise RelayError(
                    f"unknown participant mode {mode!r} (expected 'sfu', 'mcu' or 'sfu_answer_only')"
                )
            owners = links.check_role(participant_id, mode, link, allow_onward, stream_owners, onward_ok)
            checked = None if offer_sdp is None else self._check(offer_sdp, "offer")
            if mode == "mcu" and self._mcu is None:
                self._mcu = ConferenceMcu(
                    self._participants,
                    self._clock,
                    self._tasks,
                    self._speaker.observe,
                    self._evaluate_speaker,
                    self._level_ext_seen,
                )
            p = Participant(
                participant_id,
                "mcu" if mode == "mcu" else "sfu",
                metadata or {},
                self._options.host_addresses,
                self._ports,
                self._options.subscriber_queue_size,
            )
            p.answer_only = mode == "sfu_answer_only"
            p.link, p.allow_onward, p.onward_ok, p.stream_owners = link, allow_onward, onward_ok, owners
            self._participants[participant_id] = p
            p.pc.on("track", lambda track: self._on_track(p, track))
            p.pc.on("connectionstatechange", lambda: self._on_connection_state(p))
            try:
                if checked is not None:
                    result = await self._answer(p, checked, stream_purposes)
                elif p.answer_only:
                    result = Negotiated("", ())  # its first offer will come to apply_offer
                else:
                    result = await self._offer(p, initial=True)
            except BaseException:
                await self._remove(p, emit=False)
                raise
            if checked is not None:
                self._start_connect_watch(p)
            await self._reconcile()
            return result

    async def apply_offer(
        self,
        participant_id: str,
        offer_sdp: str,
        stream_purposes: Mapping[str, str] | None = None,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Negotiated:
        async with self._lock:
            p = self._get(participant_id)
            owners = links.check_owners(p.id, p.link, stream_owners)
            result = await self._answer(p, self._check(offer_sdp, "offer"), stream_purposes, owners)
            self._start_connect_watch(p)
            await self._reconcile()
            return result

    async def accept_answer(
        self,
        participant_id: str,
        answer_sdp: str,
        stream_owners: Mapping[str, Mapping[str, str]] | None = None,
        onward_ok: bool | None = None,
    ) -> None:
        async with self._lock:
            p = self._get(participant_id)
            owners = links.check_owners(p.id, p.link, stream_owners)
            if onward_ok is not None and not p.link:
                raise InvalidLinkError(f"participant {participant_id!r}: onward_ok needs a link")
            if p.signaling_state != "have-local-offer":
                raise NegotiationError(
                    f"participant {participant_id!r} has no relay offer pending "
                    f"(signaling state {p.signaling_state!r})"
                )
            checked = self._check(answer_sdp, "answer")
            try:
                await p.pc.setRemoteDescription(RTCSessionDescription(checked.sdp, "answer"))
            except Exception as exc:
                raise translate_error(exc) from exc
            p.negotiated_once = True
            p.stream_owners.update(owners)
            if onward_ok is not None:
                p.onward_ok = onward_ok  # the far side's policy, told in its answer
            self._sync_publications(p)
            self._start_connect_watch(p)
            await self._reconcile()

    async def request_offer(self, participant_id: str, *, add_audio: int = 0, add_video: int = 0) -> None:
        async with self._lock:
            p = self._get(participant_id)
            if p.answer_only or p.mode != "sfu":
                mode = "sfu_answer_only" if p.answer_only else p.mode
                raise NegotiationError(
                    f"participant {participant_id!r} (mode {mode!r}): the relay does not send it offers"
                )
            if add_audio < 0 or add_video < 0:
                raise InvalidRequestError(
                    f"participant {participant_id!r}: m-lines to add must not be negative "
                    f"(add_audio={add_audio}, add_video={add_video})"
                )
            extra = p.extra_recv
            total = len(p.pc.getTransceivers()) + extra["audio"] + extra["video"] + add_audio + add_video
            if total > self._options.max_media_sections:
                raise InvalidRequestError(
                    f"participant {participant_id!r}: {total} m-lines would exceed "
                    f"max_media_sections ({self._options.max_media_sections})"
                )
            extra["audio"] += add_audio
            extra["video"] += add_video
            p.needs_offer = True
            await self._reconcile()

    async def add_ice_candidate(
        self,
        participant_id: str,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        async with self._lock:
            p = self._get(participant_id)
            if p.pc.remoteDescription is None:
                raise NegotiationError(f"participant {participant_id!r}: ICE candidate before any SDP")
            if not candidate:
                await p.pc.addIceCandidate(None)
                return
            line = candidate[len("candidate:") :] if candidate.startswith("candidate:") else candidate
            if sdp_mid is None and sdp_mline_index is None:
                raise InvalidCandidateError("ICE candidate has neither sdpMid nor sdpMLineIndex")
            try:
                parsed: RTCIceCandidate = aiortc_sdp.candidate_from_sdp(line)
            except Exception as exc:
                raise InvalidCandidateError(
                    f"ICE candidate could not be parsed: {candidate[:200]!r}"
                ) from exc
            parsed.sdpMid = sdp_mid
            parsed.sdpMLineIndex = sdp_mline_index
            await p.pc.addIceCandidate(parsed)

    async def remove_participant(self, participant_id: str) -> None:
        async with self._lock:
            p = self._get(participant_id)
            await self._remove(p)
            self._emit(ParticipantLeft(self.conference_id, participant_id))
            await self._reconcile()

    async def subscribe(self, subscriber_id: str, publisher_id: str) -> None:
        async with self._lock:
            self._get(subscriber_id), self._get(publisher_id)
            self._denied.discard((subscriber_id, publisher_id))
            await self._reconcile()

    async def unsubscribe(self, subscriber_id: str, publisher_id: str) -> None:
        async with self._lock:
            self._get(subscriber_id), self._get(publisher_id)
            self._denied.add((subscriber_id, publisher_id))
            await self._reconcile()

    def streams_for(self, participant_id: str) -> tuple[StreamInfo, ...]:
        p = self._get(participant_id)
        return tuple(
            replace(down.info, mid=t.mid) for t, down in p.down_transceivers.items() if down is not None
        )

    def _announced_streams(self, p: Participant) -> tuple[StreamInfo, ...]:
        """Streams for a ``NegotiationNeeded``; for a participant that always offers, what it will
        receive once it re-offered: the placed ones still wanted, and the pending ones."""
        placed = self.streams_for(p.id)
        if not p.answer_only:
            return placed
        desired = self._desired_ups(p)
        kept = tuple(
            replace(down.info, mid=t.mid)
            for t, down in p.down_transceivers.items()
            if down is not None and down.up in desired
        )
        return kept + offered_sections.pending_streams(p, desired, self._stream_info)

    def published_tracks(self) -> tuple[PublishedTrack, ...]:
        return tuple(up.info for p in self._participants.values() for up in p.ups.values())

    def participant_ids(self) -> tuple[str, ...]:
        return tuple(self._participants)

    def stats(self) -> ConferenceStats:
        parts = tuple(p.stats() for p in self._participants.values())
        return ConferenceStats(
            conference_id=self.conference_id,
            participants=parts,
            packets_in=sum(s.packets_in for s in parts),
            bytes_in=sum(s.bytes_in for s in parts),
            packets_out=sum(s.packets_out for s in parts),
            bytes_out=sum(s.bytes_out for s in parts),
            drops=sum(s.drops for s in parts),
            keyframe_requests_received=sum(s.keyframe_requests_received for s in parts),
            keyframe_requests_forwarded=sum(s.keyframe_requests_forwarded for s in parts),
            nacks_received=sum(s.nacks_received for s in parts),
            retransmissions=sum(s.retransmissions for s in parts),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        async with self._lock:
            for p in list(self._participants.values()):
                await self._remove(p, emit=False)
            if self._mcu is not None:
                await self._mcu.close()
                self._mcu = None

    # ---- signaling ------------------------------------------------------------------------------

    def _check(self, sdp: str, sdp_type: str) -> CheckedSdp:
        return check_remote_sdp(
            sdp,
            sdp_type,
            max_bytes=self._options.max_sdp_bytes,
            max_sections=self._options.max_media_sections,
        )

    async def _answer(
        self,
        p: Participant,
        offer: CheckedSdp,
        purposes: Mapping[str, str] | None,
        owners: Mapping[str, dict[str, str]] | None = None,
    ) -> Negotiated:
        if p.signaling_state != "stable":
            raise NegotiationError(
                f"participant {p.id!r} has a relay offer pending (signaling state {p.signaling_state!r}): "
                "answer it before re-offering"
            )
        try:
            await p.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        except Exception as exc:
            raise translate_error(exc) from exc
        hooks.route_rtp_by_mid(p.pc)
        self._apply_rejections(p, offer)
        for mid, extensions in offer.rid_extensions:
            t = next((t for t in p.pc.getTransceivers() if t.mid == mid), None)
            if t is not None:
                hooks.add_header_extensions(t, list(extensions))
        if purposes:
            p.stream_purposes.update(purposes)
        p.stream_owners.update(owners or {})
        if p.mode == "mcu" and not p.mix_transceivers and self._mcu is not None:
            self._mcu.attach_mix(p, initial=False)
        if p.answer_only:
            for up in [up for up in p.downs if up not in self._desired_ups(p)]:
                self._detach(p, up)
            offered_sections.place(p, self._desired_ups(p), self._attach)
            p.reoffer_pending = False
        prefer_forwardable(p)
        answer = await p.pc.createAnswer()
        await p.pc.setLocalDescription(answer)
        p.negotiated_once = True
        self._sync_publications(p)
        sdp = write_rejected(p.pc.localDescription.sdp, p.rejected)
        return Negotiated(answer_simulcast(sdp, offer.simulcast), self.streams_for(p.id))

    def _apply_rejections(self, p: Participant, offer: CheckedSdp) -> None:
        """Sections the participant's offer has rejected now: nothing is sent or received on them."""
        p.rejected = {r.mid: r for r in offer.rejected}
        for t in p.pc.getTransceivers():
            if t.mid not in p.rejected:
                continue
            t.direction = "inactive"
            down = p.down_transceivers.get(t)
            if down is not None:
                self._detach(p, down.up)

    async def _offer(self, p: Participant, initial: bool = False) -> Negotiated:
        if initial:
            if p.mode == "mcu" and self._mcu is not None:
                self._mcu.attach_mix(p, initial=True)
            else:
                p.pc.addTransceiver("audio", direction="recvonly")
                p.pc.addTransceiver("video", direction="recvonly")
        for kind, count in p.extra_recv.items():
            for _ in range(count):
                p.pc.addTransceiver(kind, direction="recvonly")
            p.extra_recv[kind] = 0
        desired = self._desired_ups(p)
        for up in [up for up in p.downs if up not in desired]:
            self._detach(p, up)
        for up in desired:
            if up not in p.downs:
                self._attach(p, up)
        prefer_forwardable(p)
        offer = await p.pc.createOffer()
        await p.pc.setLocalDescription(offer)
        hooks.route_rtp_by_mid(p.pc)
        p.needs_offer = False
        return Negotiated(write_rejected(p.pc.localDescription.sdp, p.rejected), self.streams_for(p.id))

    async def _reconcile(self) -> None:
        for q in list(self._participants.values()):
            if q.closed or q.mode != "sfu" or not q.negotiated_once:
                continue
            if q.answer_only:
                self._request_reoffer(q)
                continue
            if set(self._desired_ups(q)) != set(q.downs):
                q.needs_offer = True
            if q.needs_offer and q.signaling_state == "stable":
                try:
                    negotiated = await self._offer(q)
                except Exception:
                    logger.exception("conference %s: renegotiation with %s failed", self.conference_id, q.id)
                    q.needs_offer = False  # no retry on every reconcile until the failure is handled
                    q.negotiated_once = False
                    self._tasks.spawn(self._fail(q, "renegotiation failed"), f"fail:{q.id}")
                    continue
                self._emit(NegotiationNeeded(self.conference_id, q.id, negotiated.sdp, negotiated.streams))

    def _request_reoffer(self, p: Participant) -> None:
        desired = self._desired_ups(p)
        key = offered_sections.reoffer_key(p, desired)
        if key is None:
            p.reoffer_key = None
        if key is None or p.reoffer_pending or key == p.reoffer_key:
            return
        p.reoffer_pending = True
        p.reoffer_key = key
        self._emit(NegotiationNeeded(self.conference_id, p.id, "", self._announced_streams(p)))

    def _desired_ups(self, p: Participant) -> list[UpTrack]:
        return links.desired_ups(p, self._participants.values(), self._denied)

    def _stream_info(self, up: UpTrack) -> StreamInfo:
        return links.stream_info(up, self._participants.get(up.info.participant_id))

    def _attach(self, p: Participant, up: UpTrack, offered: RTCRtpTransceiver | None = None) -> None:
        """A down track of ``up`` for ``p``: on a new m-line of the relay's next offer, or on an m-line
        ``p`` offered (``offered``, codecs already pinned)."""
        kind = up.info.kind
        track = hooks.ForwardedTrack(kind, up.info.track_id)
        if offered is None:
            transceiver = p.pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(capabilities_matching(kind, up.codec))
        else:
            transceiver = offered
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        hooks.set_sender_stream_id(transceiver.sender, up.info.stream_id)
        info = self._stream_info(up)
        down = DownTrack(up, p.writer, transceiver.sender, info, self._options.history_size)
        hooks.hook_sender(transceiver.sender, down.start, down.on_feedback)
        up.downs.append(down)
        p.downs[up] = down
        p.down_transceivers[transceiver] = down

    def _detach(self, p: Participant, up: UpTrack) -> None:
        down = p.downs.pop(up)
        if down in up.downs:
            up.downs.remove(down)
        for t, d in p.down_transceivers.items():
            if d is down:
                # aiortc cannot recycle or remove an m-line: it stays, inactive.
                t.direction = "inactive"
                p.down_transceivers[t] = None

    # ---- publications ---------------------------------------------------------------------------

    def _on_track(self, p: Participant, track: MediaStreamTrack) -> None:
        for t in p.pc.getTransceivers():
            if t.receiver.track is track:
                hooks.tap_receiver(t.receiver, functools.partial(self._dispatch, p, t))
                return

    @staticmethod
    def _dispatch(p: Participant, t: RTCRtpTransceiver, packet: Any, codec: RTCRtpCodecParameters) -> None:
        up = p.ups.get(t)
        if up is not None:
            up.on_packet(packet, codec)

    def _sync_publications(self, p: Participant) -> None:
        msids = p.remote_msids()
        for t in p.pc.getTransceivers():
            if t in p.down_transceivers:
                continue
            receiving = t.currentDirection in ("recvonly", "sendrecv")
            if receiving and t not in p.ups:
                self._publish(p, t, msids.get(t.mid or ""))
            elif not receiving and t in p.ups:
                self._unpublish(p, t)

    def _publish(self, p: Participant, t: RTCRtpTransceiver, msid: Any) -> None:
        codecs = hooks.negotiated_codecs(t)
        if not codecs:
            return
        origin_stream = msid.stream_id if msid is not None else None
        origin_track = msid.track_id if msid is not None else None
        info = PublishedTrack(
            participant_id=p.id,
            track_id=f"{p.id}:{secrets.token_hex(6)}",
            stream_id=_relay_stream_id(p, origin_stream),
            kind="audio" if t.kind == "audio" else "video",
            codec=codecs[0].mimeType,
            purpose=p.stream_purposes.get(origin_stream or "", "m.usermedia"),
            origin_stream_id=origin_stream,
            origin_track_id=origin_track,
            owner=p.stream_owners.get(origin_stream or ""),
        )
        up = UpTrack(
            info,
            t.receiver,
            codecs[0],
            p.counters,
            self._clock,
            self._tasks,
            self._options.keyframe_min_interval,
        )
        if info.kind == "audio":
            key = _speaker_key(p, info)
            if key != p.id and info.owner is not None:
                self._owner_keys[key] = (p.id, dict(info.owner))
            up.on_audio_level = lambda level: self._on_level(p.id, level, key)
        p.ups[t] = up
        if self._mcu is not None:
            self._mcu.add_source(p, up)
        self._emit(TrackPublished(self.conference_id, info))

    def _unpublish(self, p: Participant, t: RTCRtpTransceiver) -> None:
        up = p.ups.pop(t)
        if self._mcu is not None:
            self._mcu.remove_source(p.id, up.info.kind)
        key = _speaker_key(p, up.info)
        if key in self._owner_keys and not any(
            _speaker_key(p, other.info) == key for other in p.ups.values() if other.info.kind == "audio"
        ):
            # A far-side user's last audio on the link: they are no speaker any more.
            del self._owner_keys[key]
            self._speaker.remove(key)
            self._evaluate_speaker(force=True)
        self._emit(TrackUnpublished(self.conference_id, up.info))

    # ---- participant lifecycle ------------------------------------------------------------------

    def _on_connection_state(self, p: Participant) -> None:
        state = p.pc.connectionState
        if state == "connected" and not p.connected.is_set():
            p.connected.set()
            self._emit(ParticipantConnected(self.conference_id, p.id))
        elif state == "failed" and not p.closed:
            self._tasks.spawn(self._fail(p, "ICE/DTLS connection failed"), f"fail:{p.id}")
        elif state == "closed" and not p.closed:
            # aiortc closes the connection itself when the peer closed DTLS (a hang-up).
            self._tasks.spawn(self._peer_left(p), f"left:{p.id}")

    def _start_connect_watch(self, p: Participant) -> None:
        """From the first full exchange: a relay offer may wait for someone to pick up."""
        if p.watch_task is None:
            p.watch_task = self._tasks.spawn(self._watch_connect(p), f"connect:{p.id}")

    async def _watch_connect(self, p: Participant) -> None:
        timeout = self._options.connect_timeout
        try:
            await asyncio.wait_for(p.connected.wait(), timeout)
        except TimeoutError:
            await self._fail(p, f"not connected after {timeout:g} s (ICE/DTLS did not complete)")

    async def _fail(self, p: Participant, reason: str) -> None:
        async with self._lock:
            if p.closed or self._participants.get(p.id) is not p:
                return
            logger.info("conference %s: participant %s failed: %s", self.conference_id, p.id, reason)
            await self._remove(p)
            self._emit(ParticipantFailed(self.conference_id, p.id, reason))
            await self._reconcile()

    async def _peer_left(self, p: Participant) -> None:
        async with self._lock:
            if p.closed or self._participants.get(p.id) is not p:
                return
            logger.info("conference %s: participant %s closed its connection", self.conference_id, p.id)
            await self._remove(p)
            self._emit(ParticipantLeft(self.conference_id, p.id))
            await self._reconcile()

    async def _remove(self, p: Participant, emit: bool = True) -> None:
        if self._participants.get(p.id) is p:
            del self._participants[p.id]
        if p.watch_task is not None and p.watch_task is not asyncio.current_task():
            p.watch_task.cancel()
        for t in list(p.ups):
            up = p.ups[t]
            for down in list(up.downs):
                up.downs.remove(down)
            if emit:
                self._unpublish(p, t)
            else:
                p.ups.pop(t)
        for up in list(p.downs):
            if p.downs[up] in up.downs:
                up.downs.remove(p.downs[up])
        p.downs.clear()
        if self._mcu is not None:
            self._mcu.remove_participant(p)
        self._speaker.remove(p.id)
        for key in [k for k, (pid, _) in self._owner_keys.items() if pid == p.id]:
            self._speaker.remove(key)
            del self._owner_keys[key]
        self._level_ext_seen.discard(p.id)
        if emit:
            self._evaluate_speaker(force=True)
        await p.close()

    def _get(self, participant_id: str) -> Participant:
        self._check_open()
        p = self._participants.get(participant_id)
        if p is None:
            raise UnknownParticipantError(
                f"no participant {participant_id!r} in conference {self.conference_id!r}"
            )
        return p

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"conference {self.conference_id!r} is closed")

    # ---- active speaker -------------------------------------------------------------------------

    def _on_level(self, participant_id: str, level: int, key: str | None = None) -> None:
        """``key``: the detector's key (``participant_id``, or a link's far-side user)."""
        self._level_ext_seen.add(participant_id)
        self._speaker.observe(key or participant_id, max(0, min(127, level)), self._clock.now())
        self._evaluate_speaker()

    def _evaluate_speaker(self, force: bool = False) -> None:
        now = self._clock.now()
        if not force and now - self._last_speaker_eval < SPEAKER_EVAL_INTERVAL:
            return
        self._last_speaker_eval = now
        change = self._speaker.evaluate(now)
        if change is not None:
            owned = self._owner_keys.get(change.speaker or "")
            if owned is not None:
                self._emit(ActiveSpeakerChanged(self.conference_id, owned[0], dict(owned[1])))
            else:
                self._emit(ActiveSpeakerChanged(self.conference_id, change.speaker))


def _relay_stream_id(p: Participant, origin_stream: str | None) -> str:
    key = origin_stream or ""
    for up in p.ups.values():
        if (up.info.origin_stream_id or "") == key:
            return up.info.stream_id
    return f"{p.id}:{secrets.token_hex(6)}"


def _speaker_key(p: Participant, info: PublishedTrack) -> str:
    """The active speaker detector's key for an audio track: its participant, or for a link's track
    with an owner, that far-side user on that link."""
    if not (p.link and info.owner):
        return p.id
    return "\0".join((p.id, info.owner.get("user_id", ""), info.owner.get("device_id", "")))
