"""One participant's conference call through a room's visio bot: a peer connection plus its signaling.

This is client code (a reference client and a test driver for the service), so unlike the core it
imports aiortc directly. Signaling is the to-device conference protocol of ``docs/protocol.md``: every
message is Olm-encrypted to the one bot device we talk to (``crypto.todevice.SecureToDeviceChannel``),
never sent in clear; messages are parsed and built by ``signaling.conference``.

::

    idle --join()--> joining --m.call.answer--> joined --leave()--> left
                        |                         |  \\
                        | timeout / hangup        |   bot m.call.hangup -> left (hangup_reason set)
                        v                         |   media failed      -> failed
                      failed                      |
           (from joined, left-by-bot or failed)   +-- bot m.call.invite {io.visio.replaces: our call}
                                                      -> new peer connection, same tracks -> joined

While joined, the bot's ``m.call.negotiate`` offers (the set of streams we receive changed) are answered
at once; ``remote`` always holds the tracks of the current remote description, named with the bot's
``sdp_stream_metadata`` (see ``tracks``). Messages are handled one at a time, in arrival order, by one
owned task; anything not from the bot device we invited (or for another call or session) is logged
and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp
from nio import AsyncClient

from visio_matrix.client.matrix import Focus, find_focus_device
from visio_matrix.client.tracks import RemoteTrack, RemoteTracks, StreamIdentity, describe_remote_media
from visio_matrix.clock import Clock, SystemClock
from visio_matrix.crypto.todevice import PlainToDevice, SecureToDevice, SecureToDeviceChannel, ToDeviceError
from visio_matrix.signaling.conference import (
    ConferenceMessage,
    GroupFields,
    build_conference_answer,
    build_conference_candidates,
    build_conference_hangup,
    build_conference_invite,
    build_conference_negotiate,
    parse_conference_message,
)
from visio_matrix.signaling.envelope import SUPPORTS_KEY, deflate, inflate, supports_deflate
from visio_matrix.signaling.messages import (
    ANSWER,
    CALL_EVENT_TYPES,
    CANDIDATES,
    HANGUP,
    INVITE,
    NEGOTIATE,
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallNegotiate,
    CallStreamMetadataChanged,
    EndOfCandidates,
    SignalingError,
    StreamMetadata,
    StreamMetadataMap,
)
from visio_matrix.tasks import TaskOwner

log = logging.getLogger(__name__)

State = Literal["idle", "joining", "joined", "left", "failed"]
PeerConnectionFactory = Callable[[RTCConfiguration], RTCPeerConnection]
INBOX_SIZE = 200


class SignalingChannel(Protocol):
    """What a ConferenceClient needs of ``crypto.todevice.SecureToDeviceChannel``."""

    def install(self) -> None: ...

    def add_handler(self, handler: Callable[[SecureToDevice], Awaitable[None]]) -> None: ...

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None: ...

    async def refresh_sender(self, message: SecureToDevice) -> SecureToDevice: ...


class ConferenceError(Exception):
    """The call could not be joined or went wrong (a clear message says why)."""


class JoinTimeout(ConferenceError, TimeoutError):
    """The bot did not answer within ``join_timeout``."""


class CallHungUp(ConferenceError):
    """The bot hung up on us: ``reason`` is its ``io.visio.reason`` (else the spec reason)."""

    def __init__(self, reason: str, message: str | None) -> None:
        super().__init__(f"the bot hung up: {reason}" + (f" ({message})" if message else ""))
        self.reason = reason
        self.message = message


class _Feed(MediaStreamTrack):
    """Hands the caller's track to one peer connection without letting it stop the track.

    aiortc's RTCRtpSender stops its track when the connection closes; the caller's tracks must survive
    that to be published again on the connection that replaces it (bot re-invite after a restart).
    One feed per connection; the previous connection is closed before the next one starts reading.
    """

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source

    async def recv(self) -> Any:
        return await self._source.recv()


def _stream_metadata(metadata: StreamMetadataMap | None) -> dict[str, StreamIdentity] | None:
    if metadata is None:
        return None
    return {
        stream_id: StreamIdentity(purpose=str(m.purpose), user_id=m.user_id, device_id=m.device_id)
        for stream_id, m in metadata.items()
    }


def _closed(pc: RTCPeerConnection) -> bool:
    """Whether the connection is closed or closing: by us, or by aiortc itself once the relay closed
    every DTLS transport (aiortc's setRemoteDescription may then still move signalingState on)."""
    return (
        pc.signalingState == "closed"
        or pc.connectionState == "closed"
        or any(t.receiver.transport.state == "closed" for t in pc.getTransceivers())
    )


class ConferenceClient:
    """Joins a room's conference through the room's visio bot, with Olm-encrypted to-device signaling.

    ``nio_client`` must be logged in with encryption enabled and kept syncing by its owner (e.g.
    ``matrix.login_client``). One ``SecureToDeviceChannel`` serves a nio client: pass the client's
    channel as ``channel`` when it has one (``VisioMatrixClient.to_device``); otherwise this client
    makes and installs its own. ``bot_device_id`` skips discovery (the room's conference notice, else
    the bot's only device). ``peer_connection_factory`` makes the RTCPeerConnection from the
    configuration (e.g. to restrict ICE to loopback in tests).
    """

    def __init__(
        self,
        nio_client: AsyncClient,
        room_id: str,
        bot_user_id: str,
        *,
        clock: Clock | None = None,
        ice_servers: Sequence[RTCIceServer] = (),
        join_timeout: float = 15.0,
        bot_device_id: str | None = None,
        channel: SignalingChannel | None = None,
        peer_connection_factory: PeerConnectionFactory | None = None,
        send_timeout: float = 10.0,
    ) -> None:
        self.room_id = room_id
        self.bot_user_id = bot_user_id
        self.remote = RemoteTracks()
        self.hangup_reason: str | None = None
        self.hangup_message: str | None = None
        self.state: State = "idle"
        self.ignored = 0  # messages dropped: not from our bot device, other call/session, duplicates, invalid
        self._client = nio_client
        self._clock = clock or SystemClock()
        self._ice_servers = list(ice_servers)
        self._join_timeout = join_timeout
        self._send_timeout = send_timeout
        self._pc_factory: PeerConnectionFactory = peer_connection_factory or RTCPeerConnection
        self._own_channel: SecureToDeviceChannel | None = None
        if channel is None:
            channel = self._own_channel = SecureToDeviceChannel(nio_client, types=CALL_EVENT_TYPES)
        self._channel: SignalingChannel = channel
        self._tasks = TaskOwner(f"conference {room_id}")
        self._inbox: asyncio.Queue[SecureToDevice] = asyncio.Queue(INBOX_SIZE)
        self._focus: Focus | None = None if bot_device_id is None else Focus(bot_user_id, bot_device_id)
        self._party_id = secrets.token_hex(8)
        self._session_id = secrets.token_hex(8)
        self._stream_id = secrets.token_hex(8)
        self._purpose = "m.usermedia"
        self._tracks: list[MediaStreamTrack] = []
        self._pc: RTCPeerConnection | None = None
        self._call_id: str | None = None
        self._our_calls: set[str] = set()  # every call id this client took part in (re-invites name one)
        self._conf_id = ""
        self._seq = 0
        self._bot_session_id = ""
        self._bot_seq = -1
        self._metadata: dict[str, StreamIdentity] = {}
        self._answered: asyncio.Future[None] | None = None
        self._deferred_offers: list[CallNegotiate] = []
        self._started = False
        self._left = False  # leave() was called: nothing more, not even a re-invite
        self._hung_up = False  # the current call is over (hangup sent or received)
        self._bot_deflates = False  # the bot said it reads compressed messages
        self._closing: set[asyncio.Future[None]] = set()  # peer connection closes under way

    # ---- public API -----------------------------------------------------------------------------

    @property
    def call_id(self) -> str | None:
        return self._call_id

    @property
    def focus(self) -> Focus | None:
        return self._focus

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        return self._pc

    async def join(self, tracks: Sequence[MediaStreamTrack] = (), *, purpose: str = "m.usermedia") -> None:
        """Invite the bot with an offer of ``tracks`` (all in one stream of ``purpose``) and wait for its
        answer. Raises ``JoinTimeout``, ``CallHungUp`` (refused: see ``hangup_reason``), ``ConferenceError``."""
        if self.state != "idle":
            raise ConferenceError(f"join() needs an idle client, this one is {self.state}")
        self.state = "joining"
        self._tracks = list(tracks)
        self._purpose = purpose
        deadline = self._clock.now() + self._join_timeout
        try:
            self._start()
            if self._focus is None:
                self._focus = await asyncio.wait_for(
                    find_focus_device(self._client, self.room_id, self.bot_user_id), self._join_timeout
                )
            if not self._conf_id:
                self._conf_id = self._focus.conf_id
            pc = self._new_pc()
            for track in self._tracks:
                self._publish(pc.addTransceiver(_Feed(track), direction="sendonly"))
            if not self._tracks:  # an offer needs an m-line to carry the transport
                pc.addTransceiver("audio", direction="recvonly")
                pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            self._pc = pc
            self._begin_call(secrets.token_hex(12))
            answered = self._answered = asyncio.get_running_loop().create_future()
            assert self._call_id is not None
            await self._send(
                INVITE,
                build_conference_invite(
                    self._call_id,
                    self._party_id,
                    self._group(),
                    self.room_id,
                    pc.localDescription.sdp,
                    int(self._join_timeout * 1000),
                    stream_metadata=self._own_metadata(),
                ),
            )
            try:
                # On timeout wait_for cancels `answered`: a late answer or hangup is then ignored.
                await asyncio.wait_for(answered, max(0.0, deadline - self._clock.now()))
            except TimeoutError:
                await self._hangup_quietly("invite_timeout")
                raise JoinTimeout(
                    f"{self.bot_user_id} did not answer the call invite within {self._join_timeout}s"
                ) from None
        except BaseException:
            if self.state == "joining":
                self.state = "failed"
            await self._close_pc()
            raise

    async def wait_for_track(
        self, user_id: str, kind: str, timeout: float, purpose: str | None = None
    ) -> RemoteTrack:
        """The remote ``kind`` track of ``user_id`` (now or when it arrives); TimeoutError after ``timeout``."""
        return await self.remote.wait_for(user_id, kind, timeout, purpose)

    async def leave(self) -> None:
        """Hang up (``user_hangup``) and close the connection; idempotent. The caller's tracks stay open."""
        if self._left:
            return
        self._left = True
        if self.state in ("joining", "joined", "failed") and not self._hung_up:
            await self._hangup_quietly("user_hangup")
        self.state = "left"
        self._started = False
        await self._tasks.close()
        if self._own_channel is not None:
            await self._own_channel.close()
        await self._close_pc()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=10)
        await self.remote.clear(ConferenceError("the call was left"))

    # ---- receiving ------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._channel.install()
        self._channel.add_handler(self._on_message)
        if self._own_channel is not None:
            self._own_channel.add_plain_handler(self._on_plain)
        self._tasks.spawn(self._worker(), "signaling")

    async def _on_message(self, message: SecureToDevice) -> None:
        # Runs in the channel's dispatch task: queue and return, so other users of the channel never wait.
        if not self._started:
            return
        if self._inbox.full():
            self._inbox.get_nowait()
            self.ignored += 1
            log.warning("%s: signaling inbox full, dropped the oldest message", self.room_id)
        self._inbox.put_nowait(message)

    async def _on_plain(self, message: PlainToDevice) -> None:
        self.ignored += 1
        log.warning("ignored an UNENCRYPTED %s to-device message from %s", message.type, message.sender)

    async def _worker(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._handle(message)
            except Exception:
                log.exception("%s: handling %s from %s failed", self.room_id, message.type, message.sender)
                await self._fail("unknown_error", ConferenceError(f"handling {message.type} failed"))

    async def _handle(self, raw: SecureToDevice) -> None:
        focus = self._focus
        if focus is None or raw.sender != focus.user_id:
            return self._ignore(raw, "not from the bot")
        if raw.sender_device != focus.device_id and raw.sender_device is None:
            raw = await self._channel.refresh_sender(raw)  # a device that appeared since our key query
        if raw.sender_device != focus.device_id:
            return self._ignore(raw, f"from device {raw.sender_device}, not the bot device {focus.device_id}")
        content = inflate(raw.content)
        if isinstance(content, SignalingError):
            return self._ignore(raw, f"invalid: {content}")
        parsed = parse_conference_message(raw.type, content)
        if isinstance(parsed, SignalingError):
            return self._ignore(raw, f"invalid: {parsed}")
        if supports_deflate(content):
            self._bot_deflates = True
        group = parsed.group
        if group.dest_session_id and group.dest_session_id != self._session_id:
            return self._ignore(raw, f"for session {group.dest_session_id}, not ours")
        message = parsed.message
        if isinstance(message, CallInvite):
            if (
                parsed.replaces is None
                or parsed.replaces not in self._our_calls
                or parsed.room_id != self.room_id
            ):
                return self._ignore(raw, "an invite that replaces none of our calls")
            if self.state == "idle" or self._left:
                return self._ignore(raw, "a re-invite after leave()")
            return await self._accept_reinvite(parsed, message)
        if message.call_id != self._call_id:
            return self._ignore(raw, f"for call {message.call_id}, not the current one")
        if group.seq <= self._bot_seq:
            return self._ignore(raw, f"seq {group.seq} already seen")
        self._bot_seq = group.seq
        self._bot_session_id = group.sender_session_id
        if group.conf_id:
            self._conf_id = group.conf_id
        if isinstance(message, CallAnswer):
            await self._on_answer(message)
        elif isinstance(message, CallNegotiate):
            await self._on_negotiate(message)
        elif isinstance(message, CallHangup):
            await self._on_hangup(parsed, message)
        elif isinstance(message, CallStreamMetadataChanged):
            self._metadata = _stream_metadata(message.stream_metadata) or {}
            await self._refresh_remote()
        elif isinstance(message, CallCandidates):
            await self._on_candidates(message)
        else:
            self._ignore(raw, "not expected from the bot")

    def _ignore(self, raw: SecureToDevice, why: str) -> None:
        self.ignored += 1
        log.info("%s: ignored %s from %s/%s: %s", self.room_id, raw.type, raw.sender, raw.sender_device, why)

    async def _on_answer(self, message: CallAnswer) -> None:
        answered, pc = self._answered, self._pc
        if answered is None or answered.done() or pc is None:
            log.info("%s: ignored a second m.call.answer", self.room_id)
            return
        try:
            await pc.setRemoteDescription(RTCSessionDescription(message.answer_sdp, "answer"))
        except Exception as exc:
            log.debug("refused answer SDP:\n%s", message.answer_sdp)
            await self._hangup_quietly("unknown_error")
            answered.set_exception(ConferenceError(f"the bot's answer was refused by aiortc: {exc}"))
            return
        self._metadata = _stream_metadata(message.stream_metadata) or {}
        await self._refresh_remote()
        await self._send_end_of_candidates()
        self.state = "joined"
        answered.set_result(None)
        deferred, self._deferred_offers = self._deferred_offers, []
        for offer in deferred:
            await self._on_negotiate(offer)

    async def _on_negotiate(self, message: CallNegotiate) -> None:
        pc = self._pc
        if message.description_type != "offer" or pc is None:
            log.info("%s: ignored a negotiate %s (we never re-offer)", self.room_id, message.description_type)
            return
        if (
            pc.signalingState == "have-local-offer"
            and self._answered is not None
            and not self._answered.done()
        ):
            # The bot made this offer after answering our invite, but it reached us first: apply the
            # answer first (when it comes), then this offer.
            log.info(
                "%s: a negotiate offer came before the answer to our invite: kept for after", self.room_id
            )
            self._deferred_offers.append(message)
            return
        try:
            await pc.setRemoteDescription(RTCSessionDescription(message.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except InvalidStateError:
            if not _closed(pc):
                raise
            # aiortc closes a connection by itself once the relay closed every DTLS transport (the
            # call ended there); the bot's hangup saying so is on its way.
            log.info("%s: a negotiate offer came for a connection the relay closed: ignored", self.room_id)
            return
        if message.stream_metadata is not None:
            self._metadata = _stream_metadata(message.stream_metadata) or {}
        assert self._call_id is not None
        await self._send(
            NEGOTIATE,
            build_conference_negotiate(
                self._call_id,
                self._party_id,
                self._group(),
                "answer",
                pc.localDescription.sdp,
                stream_metadata=self._own_metadata(),
            ),
        )
        await self._refresh_remote()

    async def _on_hangup(self, parsed: ConferenceMessage, message: CallHangup) -> None:
        reason = parsed.visio_reason or message.reason
        self._hung_up = True
        self.hangup_reason, self.hangup_message = reason, parsed.visio_message
        log.info("%s: the bot hung up: %s (%s)", self.room_id, reason, parsed.visio_message)
        error = CallHungUp(reason, parsed.visio_message)
        if self._answered is not None and not self._answered.done():
            self.state = "failed"
            self._answered.set_exception(error)
        else:
            self.state = "left"
        await self._close_pc()
        await self.remote.clear(error)

    async def _on_candidates(self, message: CallCandidates) -> None:
        # The bot puts all its candidates in its SDP; accept trickled ones anyway (spec behaviour).
        pc = self._pc
        if pc is None:
            return
        for entry in message.candidates:
            if isinstance(entry, EndOfCandidates):
                continue
            text = entry.candidate.removeprefix("a=").removeprefix("candidate:")
            candidate = candidate_from_sdp(text)
            candidate.sdpMid, candidate.sdpMLineIndex = entry.sdp_mid, entry.sdp_mline_index
            await pc.addIceCandidate(candidate)

    async def _accept_reinvite(self, parsed: ConferenceMessage, invite: CallInvite) -> None:
        """The bot restarted and calls us back: answer on a new connection with the same tracks."""
        log.info(
            "%s: the bot re-invites (call %s replaces %s)", self.room_id, invite.call_id, parsed.replaces
        )
        self.state = "joining"
        await self._close_pc()
        await self.remote.clear()  # the old connection's tracks are gone; the new ones come below
        self._begin_call(invite.call_id)
        group = parsed.group
        self._bot_seq, self._bot_session_id = group.seq, group.sender_session_id
        if group.conf_id:
            self._conf_id = group.conf_id
        self._metadata = _stream_metadata(invite.stream_metadata) or {}
        pc = self._new_pc()
        self._pc = pc
        await pc.setRemoteDescription(RTCSessionDescription(invite.offer_sdp, "offer"))
        unplaced = self._place_tracks(pc, invite.offer_sdp)
        if unplaced:
            log.warning(
                "%s: the bot's offer has no m-line for %d of our tracks; they are not published",
                self.room_id,
                unplaced,
            )
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send(
            ANSWER,
            build_conference_answer(
                invite.call_id,
                self._party_id,
                self._group(),
                pc.localDescription.sdp,
                stream_metadata=self._own_metadata(),
            ),
        )
        await self._send_end_of_candidates()
        self.hangup_reason = self.hangup_message = None
        self.state = "joined"
        await self._refresh_remote()
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    def _place_tracks(self, pc: RTCPeerConnection, offer_sdp: str) -> int:
        """Put our tracks on the offer's m-lines where the bot wants to receive; how many found no place."""
        wanting = {
            m.rtp.muxId
            for m in SessionDescription.parse(offer_sdp).media
            if m.direction in ("recvonly", "sendrecv")
        }
        free = [t for t in pc.getTransceivers() if t.mid in wanting and t.sender.track is None]
        unplaced = 0
        for track in self._tracks:
            transceiver = next((t for t in free if t.kind == track.kind), None)
            if transceiver is None:
                unplaced += 1
                continue
            free.remove(transceiver)
            transceiver.sender.replaceTrack(_Feed(track))
            transceiver.direction = "sendrecv"  # what addTrack does: our answer then says sendonly
            self._publish(transceiver)
        return unplaced

    # ---- sending --------------------------------------------------------------------------------

    def _begin_call(self, call_id: str) -> None:
        self._call_id = call_id
        self._deferred_offers = []
        self._hung_up = False
        self._our_calls.add(call_id)
        self._seq = 0
        self._bot_seq = -1

    def _group(self) -> GroupFields:
        group = GroupFields(
            conf_id=self._conf_id,
            device_id=str(self._client.device_id),
            sender_session_id=self._session_id,
            dest_session_id=self._bot_session_id,
            seq=self._seq,
        )
        self._seq += 1
        return group

    def _own_metadata(self) -> StreamMetadataMap | None:
        if not self._tracks:
            return None
        return {self._stream_id: StreamMetadata(purpose=self._purpose)}

    async def _send(self, event_type: str, content: dict[str, Any]) -> None:
        focus = self._focus
        assert focus is not None
        if event_type in (INVITE, ANSWER, NEGOTIATE):
            content[SUPPORTS_KEY] = True  # we read compressed messages (signaling.envelope)
        if self._bot_deflates:
            content = deflate(content)
        try:
            await asyncio.wait_for(
                self._channel.send(focus.user_id, focus.device_id, event_type, content), self._send_timeout
            )
        except TimeoutError:
            raise ConferenceError(
                f"sending {event_type} to the bot took more than {self._send_timeout}s"
            ) from None
        except ToDeviceError as exc:
            raise ConferenceError(f"cannot send {event_type} to the bot: {exc}") from exc

    async def _send_end_of_candidates(self) -> None:
        # aiortc gathers every candidate before it writes the SDP: they are all in it already.
        assert self._call_id is not None
        await self._send(
            CANDIDATES,
            build_conference_candidates(self._call_id, self._party_id, self._group(), (EndOfCandidates(),)),
        )

    async def _hangup_quietly(self, reason: str) -> None:
        if self._call_id is None or self._focus is None or self._hung_up:
            return
        self._hung_up = True
        content = build_conference_hangup(self._call_id, self._party_id, self._group(), reason=reason)
        try:
            await self._send(HANGUP, content)
        except ConferenceError as exc:
            log.warning("%s: could not send the hangup: %s", self.room_id, exc)

    async def _fail(self, reason: str, error: ConferenceError) -> None:
        if self.state == "left":
            return
        await self._hangup_quietly(reason)
        self.state = "failed"
        if self._answered is not None and not self._answered.done():
            self._answered.set_exception(error)
        await self._close_pc()
        await self.remote.clear(error)

    # ---- peer connection ------------------------------------------------------------------------

    def _new_pc(self) -> RTCPeerConnection:
        # max-bundle: the relay requires it (aiortc's default loses the 2nd m-line of a kind).
        config = RTCConfiguration(iceServers=self._ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        pc = self._pc_factory(config)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is self._pc and pc.connectionState == "failed" and self.state == "joined":
                # No hangup: the bot sees the failure too, and calls back after a restart (re-invite).
                log.warning("%s: media connection failed", self.room_id)
                self.state = "failed"

        return pc

    def _publish(self, transceiver: RTCRtpTransceiver) -> None:
        # One msid stream for all our tracks (as a browser does for a camera + microphone), so the bot's
        # metadata for it covers them all. aiortc has no API for the stream id of a sender.
        transceiver.sender._stream_id = self._stream_id

    async def _refresh_remote(self) -> None:
        pc = self._pc
        if pc is None or pc.remoteDescription is None:
            return
        by_mid = {t.mid: t.receiver.track for t in pc.getTransceivers() if t.mid is not None}
        await self.remote.update(
            describe_remote_media(pc.remoteDescription.sdp), lambda mid: by_mid.get(mid), self._metadata
        )

    async def _close_pc(self) -> None:
        """Closes the peer connection to the end even if the task asking is cancelled (a hangup handled
        by the signaling worker while ``leave()`` stops that worker): a close cut short leaves aiortc's
        decoder threads waiting forever. ``leave()`` waits for closes still running."""
        pc, self._pc = self._pc, None
        if pc is not None:
            closing = asyncio.ensure_future(pc.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            await asyncio.shield(closing)
