"""Transport: Matrix-native conference signaling, Olm-encrypted to-device ``m.call.*`` (docs/protocol.md).

A participant's device invites the bot's device into the room's conference; the bot admits it
through the hub and answers with the relay's SDP; later the bot sends ``m.call.negotiate`` offers
when what the participant receives changes, and hangs up with ``io.visio.reason`` when the hub
removes it. Identity is the Olm sender (user and the device whose published keys match the
session), never a field of the content; unverifiable devices and unencrypted signaling are refused.

Messages are handled in order per sending device and concurrently across devices (one worker per
device, so 25 people joining at once do not queue behind each other). After a restart, participants
who were in a call get a fresh invite from the bot (``io.visio.replaces`` = their old call id).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from visio_matrix.clock import Clock
from visio_matrix.crypto.todevice import OutgoingToDevice, PlainToDevice, SecureToDevice, ToDeviceError
from visio_matrix.relay.api import Negotiated, StreamInfo
from visio_matrix.signaling.conference import (
    ConferenceMessage,
    GroupFields,
    VisioReason,
    build_conference_answer,
    build_conference_hangup,
    build_conference_invite,
    build_conference_negotiate,
    parse_conference_message,
    refuse_invite,
)
from visio_matrix.signaling.envelope import SUPPORTS_KEY, deflate, inflate, supports_deflate
from visio_matrix.signaling.messages import (
    CALL_EVENT_TYPES,
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallNegotiate,
    CallReject,
    Candidate,
    SignalingError,
    StreamMetadata,
)
from visio_matrix.signaling.parse import USER_ID_RE
from visio_matrix.tasks import TaskOwner

from .hub_api import HubApi as _HubApi
from .hub_api import HubError, Identity, Joined, RemovalReason

log = logging.getLogger(__name__)

BOT_INVITE_LIFETIME_MS = 60_000
OFFER_TIMEOUT_S = BOT_INVITE_LIFETIME_MS / 1000  # an offer of ours unanswered this long ends the call
OFFER_CHECK_INTERVAL_S = 5.0

_REASON_FOR_HUB_CODE = {
    "conference_full": VisioReason.CONFERENCE_FULL,
    "not_a_member": VisioReason.NOT_A_MEMBER,
    "server_not_allowed": VisioReason.SERVER_NOT_ALLOWED,
    "no_conference": VisioReason.NO_CONFERENCE,
}
_REASON_FOR_REMOVAL = {
    RemovalReason.NOT_A_MEMBER: VisioReason.NOT_A_MEMBER,
    RemovalReason.CONFERENCE_ENDED: VisioReason.CONFERENCE_ENDED,
    RemovalReason.MEDIA_FAILED: VisioReason.MEDIA_FAILED,
    RemovalReason.REPLACED: VisioReason.REPLACED,
}


class Channel(Protocol):
    """``crypto.todevice.SecureToDeviceChannel``."""

    def add_handler(self, handler: Callable[[SecureToDevice], Awaitable[None]]) -> None: ...

    def add_plain_handler(self, handler: Callable[[PlainToDevice], Awaitable[None]]) -> None: ...

    async def refresh_sender(self, message: SecureToDevice) -> SecureToDevice: ...

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None: ...

    async def send_plain(
        self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]
    ) -> None: ...

    async def send_many(self, messages: Sequence[OutgoingToDevice]) -> dict[tuple[str, str], str]: ...


class Hub(_HubApi, Protocol):
    def take_restorable(self, transport: Any) -> list[Any]: ...

    def conference_of_room(self, room_id: str) -> str | None: ...


def stream_metadata(streams: tuple[StreamInfo, ...]) -> dict[str, StreamMetadata]:
    """What the participant receives, per msid stream id, with whose media it is.

    Only Matrix users are named by ``user_id`` (clients check it is one: a guest's ``guest:...`` id
    would make them refuse the whole message); a guest's stream carries its public id as ``device_id``.
    """
    out: dict[str, StreamMetadata] = {}
    for s in streams:
        user_id = s.publisher_metadata.get("user_id")
        out[s.stream_id] = StreamMetadata(
            purpose=s.purpose,
            user_id=user_id if user_id and USER_ID_RE.fullmatch(user_id) else None,
            device_id=s.publisher_metadata.get("device_id"),
        )
    return out


@dataclass
class _Call:
    """One participant device's call with the bot; the hub's ``ParticipantLink`` for it."""

    transport: ToDeviceCalls
    user_id: str
    device_id: str
    call_id: str
    their_party_id: str
    their_session: str
    conf_id: str = ""
    room_id: str = ""
    participant_id: str = ""
    seq: int = 0
    their_seq: int = -1  # highest seq seen from the participant in this call
    deflate: bool = False  # the participant reads compressed messages (signaling.envelope)
    awaiting_answer: bool = False  # our offer (invite or negotiate) is unanswered
    offered_at: float = 0.0  # clock time of that offer
    ended: bool = False
    # Set once our answer (or re-invite) is sent: the hub may ask for a new offer before that, and the
    # participant must get the answer first (its peer connection cannot take an offer before it).
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def group(self) -> GroupFields:
        self.seq += 1
        return GroupFields(
            conf_id=self.conf_id,
            device_id=self.transport.bot_device_id,
            sender_session_id=self.transport.session_id,
            dest_session_id=self.their_session,
            seq=self.seq,
        )

    async def send(self, event_type: str, content: dict[str, Any]) -> None:
        if event_type in ("m.call.invite", "m.call.answer", "m.call.negotiate"):
            content[SUPPORTS_KEY] = True
        if self.deflate:
            content = deflate(content)
        await self.transport.send(self.user_id, self.device_id, event_type, content)

    # ---- ParticipantLink ---------------------------------------------------------------------

    async def send_offer(self, negotiated: Negotiated) -> None:
        await self.opened.wait()
        if self.ended:
            return
        self.awaiting_answer = True
        self.offered_at = self.transport.now()
        await self.send(
            "m.call.negotiate",
            build_conference_negotiate(
                self.call_id,
                self.transport.party_id,
                self.group(),
                "offer",
                negotiated.sdp,
                lifetime_ms=BOT_INVITE_LIFETIME_MS,
                stream_metadata=stream_metadata(negotiated.streams),
            ),
        )

    async def closed(self, reason: str) -> None:
        self.transport.forget(self)
        if self.ended:
            return
        self.ended = True
        visio = _REASON_FOR_REMOVAL.get(reason, VisioReason.CONFERENCE_ENDED)
        await self.send(
            "m.call.hangup",
            build_conference_hangup(self.call_id, self.transport.party_id, self.group(), visio),
        )


class _Batcher:
    """Coalesces the bot's outgoing messages: whatever is queued while one ``PUT /sendToDevice`` is in
    flight leaves in the next one (one request for many devices instead of one each: a join makes the
    relay renegotiate with everyone already in). Order per device is kept; each caller learns whether
    its own message went out."""

    def __init__(self, channel: Channel, tasks: TaskOwner) -> None:
        self._channel = channel
        self._tasks = tasks
        self._pending: list[tuple[OutgoingToDevice, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._running = False
        self.requests = 0
        self.messages = 0

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((OutgoingToDevice(user_id, device_id, event_type, content), future))
        self._wake.set()
        if not self._running:
            self._running = True
            self._tasks.spawn(self._run(), "send-batcher")
        await future

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await self._flush(batch)
        finally:
            self._running = False
            for _, future in self._pending:
                if not future.done():
                    future.set_exception(ToDeviceError("the service is stopping"))
            self._pending = []

    async def _flush(self, batch: list[tuple[OutgoingToDevice, asyncio.Future[None]]]) -> None:
        self.requests += 1
        self.messages += len(batch)
        try:
            failures = await self._channel.send_many([m for m, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                # One bad message (e.g. M_TOO_LARGE) fails the whole request: send one by one instead.
                for item in batch:
                    await self._flush([item])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(ToDeviceError(str(exc)))
            return
        for m, future in batch:
            if future.done():
                continue
            reason = failures.get((m.user_id, m.device_id))
            if reason is None:
                future.set_result(None)
            else:
                future.set_exception(
                    ToDeviceError(f"cannot send {m.type} to {m.user_id}/{m.device_id}: {reason}")
                )


class ToDeviceCalls:
    def __init__(
        self,
        channel: Channel,
        hub: Hub,
        bot_user_id: str,
        bot_device_id: str,
        clock: Clock,
        handled_elsewhere: Callable[[str], bool] | None = None,
    ) -> None:
        self.channel = channel
        # Senders whose signaling another transport handles (peer ministries' bots: calls.federation).
        self._handled_elsewhere = handled_elsewhere or (lambda _sender: False)
        self._hub = hub
        self.bot_user_id = bot_user_id
        self.bot_device_id = bot_device_id
        self._clock = clock
        self.party_id = bot_device_id
        self.session_id = secrets.token_urlsafe(12)  # new at every start: clients see a restart
        self._calls: dict[tuple[str, str], _Call] = {}
        self._workers: dict[tuple[str, str], asyncio.Queue[Callable[[], Awaitable[None]]]] = {}
        self._tasks = TaskOwner("todevice-calls")
        self._batcher = _Batcher(channel, self._tasks)

    def now(self) -> float:
        return self._clock.now()

    def start(self) -> None:
        self._tasks.spawn(self._expire_loop(), "expire-offers")
        self.channel.add_handler(self._on_secure)
        self.channel.add_plain_handler(self._on_plain)
        restorable = self._hub.take_restorable("todevice")
        if restorable:
            self._tasks.spawn(self._restore(restorable), "restore")

    async def stop(self) -> None:
        await self._tasks.close()
        self._calls.clear()
        self._workers.clear()

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None:
        await self._batcher.send(user_id, device_id, event_type, content)

    async def expire_offers(self) -> int:
        """Participants who left an offer of ours unanswered for ``OFFER_TIMEOUT_S`` are dropped (their
        media can no longer follow the call) with ``invite_expired``; returns how many."""
        now = self._clock.now()
        stale = [
            c for c in self._calls.values() if c.awaiting_answer and now - c.offered_at > OFFER_TIMEOUT_S
        ]
        for call in stale:
            log.warning(
                "%s %s did not answer our offer within %ss: dropped",
                call.user_id,
                call.device_id,
                OFFER_TIMEOUT_S,
            )
            self.forget(call)
            call.ended = True
            await self._hub.leave(call.participant_id, RemovalReason.MEDIA_FAILED)
            await self.send(
                call.user_id,
                call.device_id,
                "m.call.hangup",
                build_conference_hangup(
                    call.call_id, self.party_id, call.group(), VisioReason.INVITE_EXPIRED
                ),
            )
        return len(stale)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(OFFER_CHECK_INTERVAL_S)
            try:
                await self.expire_offers()
            except Exception:
                log.exception("checking unanswered offers failed")

    def forget(self, call: _Call) -> None:
        key = (call.user_id, call.device_id)
        if self._calls.get(key) is call:
            del self._calls[key]

    # ---- per-device ordering -------------------------------------------------------------------

    def _enqueue(self, key: tuple[str, str], job: Callable[[], Awaitable[None]]) -> None:
        queue = self._workers.get(key)
        if queue is None:
            queue = asyncio.Queue()
            self._workers[key] = queue
            self._tasks.spawn(self._worker(key, queue), f"device-{key[0]}-{key[1]}")
        queue.put_nowait(job)

    async def _worker(
        self, key: tuple[str, str], queue: asyncio.Queue[Callable[[], Awaitable[None]]]
    ) -> None:
        while True:
            try:
                job = await asyncio.wait_for(queue.get(), 300)
            except TimeoutError:
                if queue.empty() and self._workers.get(key) is queue:
                    del self._workers[key]
                    return
                continue
            try:
                await job()
            except Exception:
                log.exception("error handling call signaling from %s %s", *key)

    # ---- receiving -----------------------------------------------------------------------------

    async def _on_plain(self, msg: PlainToDevice) -> None:
        if msg.type not in CALL_EVENT_TYPES or self._handled_elsewhere(msg.sender):
            return
        call_id = msg.content.get("call_id")
        device = msg.content.get("device_id")
        log.warning(
            "unencrypted %s from %s refused: call signaling must be Olm-encrypted", msg.type, msg.sender
        )
        if isinstance(call_id, str) and isinstance(device, str) and msg.type == "m.call.invite":
            content = build_conference_hangup(
                call_id[:255], self.party_id, self._bare_group(), VisioReason.NOT_ENCRYPTED
            )
            await self.channel.send_plain(msg.sender, device[:255], "m.call.hangup", content)

    def _bare_group(self, dest_session: str = "") -> GroupFields:
        return GroupFields("", self.bot_device_id, self.session_id, dest_session, 0)

    async def _on_secure(self, msg: SecureToDevice) -> None:
        if msg.type not in CALL_EVENT_TYPES or self._handled_elsewhere(msg.sender):
            return
        if not msg.verified:
            msg = await self.channel.refresh_sender(msg)
        if not msg.verified:
            await self._refuse_unverified(msg)
            return
        assert msg.sender_device is not None
        key = (msg.sender, msg.sender_device)
        self._enqueue(key, lambda: self._handle(key, msg))

    async def _refuse_unverified(self, msg: SecureToDevice) -> None:
        log.warning(
            "%s from %s (device %s) refused: no published device of that user matches the Olm session",
            msg.type,
            msg.sender,
            msg.claimed_device,
        )
        call_id = msg.content.get("call_id")
        if msg.type == "m.call.invite" and isinstance(call_id, str) and msg.claimed_device:
            content = build_conference_hangup(
                call_id[:255], self.party_id, self._bare_group(), VisioReason.UNVERIFIED_DEVICE
            )
            await self.channel.send_plain(msg.sender, msg.claimed_device, "m.call.hangup", content)

    async def _handle(self, key: tuple[str, str], msg: SecureToDevice) -> None:
        content = inflate(msg.content)
        if isinstance(content, SignalingError):
            await self._bad_message(key, msg, content)
            return
        parsed = parse_conference_message(msg.type, content)
        if isinstance(parsed, SignalingError):
            await self._bad_message(key, msg, parsed)
            return
        deflates = supports_deflate(content)
        m = parsed.message
        dest = parsed.group.dest_session_id
        if dest and dest != self.session_id:
            # Addressed to an earlier run of the service (docs/protocol.md): stale, dropped.
            log.info("%s from %s %s for an earlier session of the bot: ignored", msg.type, *key)
            return
        if isinstance(m, CallInvite) and parsed.replaces is None:
            await self._invite(key, parsed, deflates)
            return
        call = self._calls.get(key)
        if call is None or call.call_id != m.call_id:
            log.info("%s for unknown call %s from %s %s: ignored", msg.type, m.call_id, *key)
            return
        if parsed.group.seq <= call.their_seq:
            log.info(
                "%s seq %d from %s %s is a duplicate or reordered: ignored", msg.type, parsed.group.seq, *key
            )
            return
        call.their_seq = parsed.group.seq
        call.deflate = call.deflate or deflates
        if isinstance(m, CallCandidates):
            for c in m.candidates:
                if isinstance(c, Candidate):
                    await self._hub.add_ice_candidate(
                        call.participant_id, c.candidate, c.sdp_mid, c.sdp_mline_index
                    )
                else:
                    await self._hub.add_ice_candidate(call.participant_id, None)
        elif isinstance(m, CallAnswer):
            if call.awaiting_answer:
                call.awaiting_answer = False
                await self._accept_answer(call, m.answer_sdp)
        elif isinstance(m, CallNegotiate):
            await self._negotiate(call, m)
        elif isinstance(m, (CallHangup, CallReject)):
            call.ended = True
            self.forget(call)
            log.info("%s %s left the call (%s)", call.user_id, call.device_id, getattr(m, "reason", "reject"))
            await self._hub.leave(call.participant_id)
        else:
            log.debug("%s from %s %s: nothing to do", msg.type, *key)

    async def _bad_message(self, key: tuple[str, str], msg: SecureToDevice, error: SignalingError) -> None:
        log.warning("bad %s from %s %s: %s", msg.type, key[0], key[1], error)
        call_id = msg.content.get("call_id")
        if not isinstance(call_id, str) or not call_id or len(call_id) > 255:
            return
        call = self._calls.get(key)
        if call is not None and call.call_id == call_id:
            call.ended = True
            self.forget(call)
            await self._hub.leave(call.participant_id)
        content = build_conference_hangup(
            call_id,
            self.party_id,
            self._bare_group(),
            VisioReason.BAD_REQUEST,
            f"Bad {msg.type}: {error.message}",
        )
        await self.send(key[0], key[1], "m.call.hangup", content)

    async def _invite(self, key: tuple[str, str], invite: ConferenceMessage, deflates: bool) -> None:
        m = invite.message
        assert isinstance(m, CallInvite) and invite.room_id is not None
        current = self._calls.get(key)
        if current is not None and current.call_id == m.call_id:
            log.info("duplicate invite %s from %s %s: ignored", m.call_id, *key)
            return
        if invite.group.conf_id and self._hub.conference_of_room(invite.room_id) not in (
            None,
            invite.group.conf_id,
        ):
            # It names a conference that is over (the room may have a newer one): say so.
            event_type, content = refuse_invite(
                invite,
                bot_party_id=self.party_id,
                bot_device_id=self.bot_device_id,
                bot_session_id=self.session_id,
                visio_reason=VisioReason.CONFERENCE_ENDED,
            )
            await self.send(key[0], key[1], event_type, content)
            return
        purposes = {sid: md.purpose for sid, md in (m.stream_metadata or {}).items()}
        call = _Call(
            self,
            key[0],
            key[1],
            m.call_id,
            m.party_id or "",
            invite.group.sender_session_id,
            room_id=invite.room_id,
            their_seq=invite.group.seq,
            deflate=deflates,
        )
        try:
            joined = await self._hub.join(
                invite.room_id,
                Identity(key[0], key[1]),
                call,
                transport="todevice",
                offer_sdp=m.offer_sdp,
                stream_purposes=purposes,
                transport_data={
                    "call_id": m.call_id,
                    "party_id": call.their_party_id,
                    "session_id": call.their_session,
                    "room_id": invite.room_id,
                    "deflate": "1" if deflates else "",
                },
            )
        except HubError as exc:
            reason = _REASON_FOR_HUB_CODE.get(exc.code, VisioReason.BAD_REQUEST)
            log.info(
                "invite from %s %s to %s refused: %s (%s)", key[0], key[1], invite.room_id, exc.code, exc
            )
            event_type, content = refuse_invite(
                invite,
                bot_party_id=self.party_id,
                bot_device_id=self.bot_device_id,
                bot_session_id=self.session_id,
                visio_reason=reason,
                message=str(exc),
            )
            await self.send(key[0], key[1], event_type, content)
            return
        self._admit(call, joined)
        try:
            await call.send(
                "m.call.answer",
                build_conference_answer(
                    call.call_id,
                    self.party_id,
                    call.group(),
                    joined.negotiated.sdp,
                    stream_metadata=stream_metadata(joined.negotiated.streams),
                ),
            )
        finally:
            call.opened.set()

    def _admit(self, call: _Call, joined: Joined) -> None:
        call.conf_id = joined.conference_id
        call.participant_id = joined.participant_id
        self._calls[(call.user_id, call.device_id)] = call

    async def _accept_answer(self, call: _Call, sdp: str) -> None:
        try:
            await self._hub.accept_answer(call.participant_id, sdp)
        except HubError as exc:
            log.warning("answer from %s %s refused: %s", call.user_id, call.device_id, exc)
            await self._hub.leave(call.participant_id, RemovalReason.MEDIA_FAILED)
            await call.closed(RemovalReason.MEDIA_FAILED)

    async def _negotiate(self, call: _Call, m: CallNegotiate) -> None:
        if m.description_type == "answer":
            if call.awaiting_answer:
                call.awaiting_answer = False
                await self._accept_answer(call, m.sdp)
            return
        if call.awaiting_answer:
            # Offers crossed: ours wins (docs/protocol.md); the participant answers ours, then re-offers.
            log.info("offer from %s %s crossed ours: ignored", call.user_id, call.device_id)
            return
        purposes = {sid: md.purpose for sid, md in (m.stream_metadata or {}).items()}
        try:
            negotiated = await self._hub.apply_offer(call.participant_id, m.sdp, purposes)
        except HubError as exc:
            log.warning("re-offer from %s %s refused: %s", call.user_id, call.device_id, exc)
            return
        await call.send(
            "m.call.negotiate",
            build_conference_negotiate(
                call.call_id,
                self.party_id,
                call.group(),
                "answer",
                negotiated.sdp,
                stream_metadata=stream_metadata(negotiated.streams),
            ),
        )

    # ---- restart -------------------------------------------------------------------------------

    async def _restore(self, restorable: list[Any]) -> None:
        for record, participant in restorable:
            data: Mapping[str, str] = participant.transport_data
            key = (participant.user_id, participant.device_id)
            self._enqueue(key, functools.partial(self._reinvite, record, participant, data))

    async def _reinvite(self, record: Any, participant: Any, data: Mapping[str, str]) -> None:
        old_call_id = data.get("call_id", "")
        call = _Call(
            self,
            participant.user_id,
            participant.device_id,
            "visio-" + secrets.token_urlsafe(12),
            data.get("party_id", ""),
            data.get("session_id", ""),
            room_id=record.room_id,
            deflate=data.get("deflate") == "1",
        )
        try:
            joined = await self._hub.join(
                record.room_id,
                Identity(participant.user_id, participant.device_id),
                call,
                transport="todevice",
                transport_data={**data, "call_id": call.call_id},
            )
        except HubError as exc:
            log.info(
                "could not bring %s %s back into %s: %s", call.user_id, call.device_id, record.room_id, exc
            )
            return
        self._admit(call, joined)
        call.awaiting_answer = True
        call.offered_at = self._clock.now()
        log.info(
            "re-inviting %s %s into %s (replaces call %s)",
            call.user_id,
            call.device_id,
            call.room_id,
            old_call_id,
        )
        try:
            await self._send_reinvite(call, joined, old_call_id)
        finally:
            call.opened.set()

    async def _send_reinvite(self, call: _Call, joined: Joined, old_call_id: str) -> None:
        await call.send(
            "m.call.invite",
            build_conference_invite(
                call.call_id,
                self.party_id,
                call.group(),
                call.room_id,
                joined.negotiated.sdp,
                BOT_INVITE_LIFETIME_MS,
                stream_metadata=stream_metadata(joined.negotiated.streams),
                replaces=old_call_id or None,
            ),
        )
