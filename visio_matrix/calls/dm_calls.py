"""The 1:1 call transport: ``m.call.*`` room events in each user's DM with the bot <-> the conference hub.

Unmodified Matrix clients (Element, Tchap) can only make 1:1 calls. A user calls the bot in their direct
chat with it, or answers the bot's ring there, and is put into a room's conference as an MCU participant
(one mixed audio and one composite video stream). The signaling rules (liveness, parties, glare,
candidates, renegotiation) are the pure ``signaling.one_to_one_room.OneToOneRoom`` state machine, one per
DM room; this shell feeds it parsed events, carries out its actions (events out through the bot's device,
Megolm-encrypted in encrypted rooms; relay steps through the hub) and feeds relay results back.

```
  user: m.call.invite (DM) --> pick conference --> hub.join(offer) --> m.call.answer (+ end of candidates)
  user: m.call.candidates  --> hub.add_ice_candidate     user/bot: m.call.hangup --> hub.leave / link.closed
  !visio join / ring       --> DM (found or created) --> hub.join(no offer) --> m.call.invite (invitee,
                               lifetime) --> first m.call.answer --> hub.accept_answer + m.call.select_answer
```

Which conference an incoming call joins: ``dm_choice`` (the user's ``!visio join`` choice, the
conference the bot last rang them for, else the only active conference they share with the bot).

Events of one DM room are handled one at a time (a lock per room), so a call's candidates wait for its
join; the hub's callbacks (``closed``, ``send_offer``) take the same lock. Invalid content is logged and
skipped, and the call it names (if any, and the sender is its party) is hung up with a reason; other
calls are not affected.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from visio_matrix.appservice.events import RoomEvent
from visio_matrix.calls.commands import Command
from visio_matrix.calls.direct_rooms import DirectRooms, KeyValueStore, RoomsIO
from visio_matrix.calls.dm_choice import ConferenceChoices, pick_conference
from visio_matrix.calls.dm_commands import DmCommands
from visio_matrix.calls.hub_api import HubApi, HubError, Identity, RemovalReason
from visio_matrix.calls.room_bot import notice
from visio_matrix.clock import Clock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.relay.api import Negotiated
from visio_matrix.signaling.actions import (
    AcceptAnswer,
    Action,
    AddCandidates,
    ApplyOffer,
    EndCall,
    Ignore,
    JoinConference,
    MakeOffer,
    SendEvent,
    UpdateStreams,
)
from visio_matrix.signaling.build import build_hangup, build_reject
from visio_matrix.signaling.messages import (
    DEFAULT_LIMITS,
    HANGUP,
    INVITE,
    REJECT,
    Candidate,
    Limits,
    SignalingError,
    StreamMetadata,
    StreamMetadataMap,
)
from visio_matrix.signaling.one_to_one import OneToOneCall, OneToOneState, parse_room_call_event
from visio_matrix.signaling.one_to_one_room import CallAction, OneToOneRoom
from visio_matrix.storage import ConferenceRecord, ParticipantRecord
from visio_matrix.tasks import TaskOwner

log = logging.getLogger(__name__)

RING_LIFETIME_MS: Final = 60_000
PENDING_DM_TTL_S: Final = 300.0  # how long a ring waits for the user to join a freshly created DM
VISIO_REASON: Final = "io.visio.reason"
VISIO_MESSAGE: Final = "io.visio.message"
MAX_RAW_CALL_ID: Final = 255

HOW_TO_PICK = (
    "Which call should I put you in? Type !visio join in the room whose call you want to join "
    "(I will call you here), or !visio join <room id or alias> here, then call me again."
)

# Why the hub removed a participant -> (spec hangup reason, our stable code).
_REMOVAL_HANGUPS: Final = {
    RemovalReason.LEFT: ("user_hangup", "left"),
    RemovalReason.NOT_A_MEMBER: ("unknown_error", "not_a_member"),
    RemovalReason.CONFERENCE_ENDED: ("user_hangup", "conference_ended"),
    RemovalReason.REPLACED: ("user_hangup", "replaced"),
    RemovalReason.SHUTDOWN: ("unknown_error", "shutdown"),
}
_REMOVAL_MESSAGES: Final = {
    RemovalReason.NOT_A_MEMBER: "You are no longer a member of the room of this call.",
    RemovalReason.CONFERENCE_ENDED: "The call has ended.",
    RemovalReason.MEDIA_FAILED: "The media connection failed.",
    RemovalReason.REPLACED: "You joined the call again from another call.",
    RemovalReason.SHUTDOWN: "The call service is restarting.",
}


class DmStore(KeyValueStore, Protocol):
    async def get_active_conference(self, room_id: str) -> ConferenceRecord | None: ...

    async def list_active_conferences(self) -> list[ConferenceRecord]: ...


def new_voip_id(length: int = 16) -> str:
    """A call or party id from the spec's grammar ([0-9a-zA-Z._~-])."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def stream_metadata_of(negotiated: Negotiated) -> StreamMetadataMap | None:
    """Our ``sdp_stream_metadata``: one entry per stream id the relay sends (the MCU mix: usermedia)."""
    out: dict[str, StreamMetadata] = {}
    for info in negotiated.streams:
        out.setdefault(info.stream_id, StreamMetadata(purpose=info.purpose or "m.usermedia"))
    return out or None


def stream_purposes(metadata: StreamMetadataMap | None) -> dict[str, str] | None:
    return {sid: m.purpose for sid, m in metadata.items()} if metadata else None


@dataclass
class _Call:
    """What the shell knows of one call beyond the state machine."""

    call_id: str
    dm_room_id: str
    user_id: str
    conference_room_id: str | None = None
    participant_id: str | None = None
    relay_offer: Negotiated | None = None  # a relay offer waiting for the machine's MakeOffer
    extras: dict[str, str] = field(default_factory=dict)  # io.visio.* fields of our next hangup


@dataclass
class _Dm:
    machine: OneToOneRoom
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class _PendingRing:
    user_id: str
    dm_room_id: str
    conference_room_id: str
    since: float


class _Link:
    """The hub's handle on one DM call's participant."""

    def __init__(self, owner: DmCalls, call_id: str) -> None:
        self._owner, self._call_id = owner, call_id

    async def send_offer(self, negotiated: Negotiated) -> None:
        await self._owner._relay_offer(self._call_id, negotiated)

    async def closed(self, reason: str) -> None:
        await self._owner._removed(self._call_id, reason)


class DmCalls:
    def __init__(
        self,
        rooms: RoomsIO,
        hub: HubApi,
        store: DmStore,
        policy: PolicyConfig,
        clock: Clock,
        *,
        ring_lifetime_ms: int = RING_LIFETIME_MS,
        tick_interval: float = 1.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._io = rooms
        self._hub = hub
        self._store = store
        self._policy = policy
        self._clock = clock
        self._ring_lifetime_ms = ring_lifetime_ms
        self._tick_interval = tick_interval
        self._limits = limits
        self.directs = DirectRooms(rooms, store)
        self.choices = ConferenceChoices()
        self._commands = DmCommands(rooms, hub, store, self.directs, self.choices, self, policy, clock)
        self.party_id = new_voip_id(8)  # the bot's party in every call of this run
        self._dms: dict[str, _Dm] = {}
        self._calls: dict[str, _Call] = {}
        self._pending: list[_PendingRing] = []
        self._tasks = TaskOwner("dm-calls")

    # ---- life cycle ---------------------------------------------------------------------------------

    async def start(self, restorable: Sequence[tuple[ConferenceRecord, ParticipantRecord]] = ()) -> None:
        """Start the timer; ``restorable`` (``ConferenceHub.take_restorable("dm")``): DM calls cut by the
        last stop: their old call is hung up and the user is rung again."""
        self._tasks.spawn(self._tick_loop(), "tick")
        for record, participant in restorable:
            self._tasks.spawn(self._restore(record, participant), f"restore-{participant.participant_id}")

    async def stop(self) -> None:
        await self._tasks.close()

    def active_calls(self) -> list[_Call]:
        return list(self._calls.values())

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            try:
                await self.tick()
            except Exception:
                log.exception("DM calls: timer step failed")

    async def tick(self) -> None:
        """Expire rings and invites past their lifetime; ring users who joined a freshly created DM."""
        now_ms = self._clock.wall_ms()
        for room_id, dm in list(self._dms.items()):
            deadline = dm.machine.deadline_ms
            if deadline is None or now_ms < deadline:
                continue
            async with dm.lock:
                await self._run(room_id, dm.machine.tick(now_ms))
        await self._pending_rings()

    async def _restore(self, record: ConferenceRecord, participant: ParticipantRecord) -> None:
        data = participant.transport_data
        dm_room, call_id, party_id = data.get("dm_room_id"), data.get("call_id"), data.get("party_id")
        if not dm_room or not call_id or not party_id:
            return
        content = build_hangup(call_id, party_id, "unknown_error")
        content[VISIO_REASON] = "restarted"
        content[VISIO_MESSAGE] = "The call service restarted: calling you again."
        await self._send(dm_room, HANGUP, content)
        if await self._store.get_active_conference(record.room_id) is not None:
            await self.ring(participant.user_id, record.room_id)

    # ---- room events ----------------------------------------------------------------------------------

    async def on_call_event(self, event: RoomEvent, event_type: str, content: dict[str, Any]) -> None:
        """An ``m.call.*`` room event (decrypted). Never raises: errors are logged with the event."""
        try:
            await self._on_call_event(event, event_type, content)
        except Exception:
            log.exception("DM calls: error handling %s %s in %s", event_type, event.event_id, event.room_id)

    async def _on_call_event(self, event: RoomEvent, event_type: str, content: dict[str, Any]) -> None:
        parsed = parse_room_call_event(
            event_type,
            content,
            sender=event.sender,
            event_id=event.event_id,
            origin_server_ts=event.origin_server_ts,
            unsigned=event.unsigned,
            received_ms=self._clock.wall_ms(),
            limits=self._limits,
        )
        if isinstance(parsed, SignalingError):
            await self._bad_event(event, event_type, content, parsed)
            return
        dm = self._dms.get(event.room_id)
        if dm is None:
            if event_type != INVITE:
                log.debug("%s in %s: no call of ours there", event_type, event.room_id)
                return
            dm = await self._dm_for_invite(event, parsed.message.call_id, content)
            if dm is None:
                return
        async with dm.lock:
            actions = dm.machine.receive(parsed, self._clock.wall_ms())
            await self._run(event.room_id, actions)

    async def _dm_for_invite(self, event: RoomEvent, call_id: str, content: dict[str, Any]) -> _Dm | None:
        """The DM machine for an invite's room, when it is the sender's DM with the bot."""
        invitee = content.get("invitee")
        if invitee is not None and invitee != self._io.user_id:
            return None  # a call between other people
        room = await self.directs.check(event.room_id, event.sender)
        if room is None:
            log.info(
                "call invite from %s in %s, which is not their DM with the bot", event.sender, event.room_id
            )
            if invitee == self._io.user_id:
                await self._send(
                    event.room_id,
                    "m.room.message",
                    notice("I only take calls in a direct chat with me: call me there."),
                )
            return None
        await self.directs.remember(event.room_id, event.sender)
        return self._dm(event.room_id)

    def _dm(self, room_id: str) -> _Dm:
        dm = self._dms.get(room_id)
        if dm is None:
            dm = _Dm(OneToOneRoom(room_id=room_id, bot_user_id=self._io.user_id, bot_party_id=self.party_id))
            self._dms[room_id] = dm
        return dm

    async def _bad_event(
        self, event: RoomEvent, event_type: str, content: dict[str, Any], error: SignalingError
    ) -> None:
        """Invalid content: logged and skipped; the call it names is hung up (when the sender is its party)."""
        log.warning(
            "invalid %s %s from %s in %s: %s", event_type, event.event_id, event.sender, event.room_id, error
        )
        raw_id = content.get("call_id") if isinstance(content, dict) else None
        if not isinstance(raw_id, str) or not 0 < len(raw_id) <= MAX_RAW_CALL_ID:
            return
        message = f"Your {event_type} event was refused: {error.message}."
        dm = self._dms.get(event.room_id)
        call = dm.machine.get(raw_id) if dm is not None else None
        if dm is not None and call is not None and not call.ended and call.remote_user_id == event.sender:
            async with dm.lock:
                await self._hangup(event.room_id, dm, call, "unknown_error", "bad_request", message)
            return
        age = max(0, self._clock.wall_ms() - event.origin_server_ts)
        if event_type == INVITE and age < RING_LIFETIME_MS and event.sender != self._io.user_id:
            room = await self.directs.check(event.room_id, event.sender)
            if room is not None:
                content_out = build_hangup(raw_id, self.party_id, "unknown_error")
                content_out.update({VISIO_REASON: "bad_request", VISIO_MESSAGE: message})
                await self._send(event.room_id, HANGUP, content_out)

    # ---- carrying out the machine's actions -------------------------------------------------------------

    async def _run(self, room_id: str, actions: list[CallAction]) -> None:
        """Carry out tagged actions in order (caller holds the DM's lock)."""
        dm = self._dms[room_id]
        queue = list(actions)
        while queue:
            call_id, action = queue.pop(0)
            try:
                queue[0:0] = await self._act(room_id, dm, call_id, action)
            except Exception:
                log.exception("DM call %s: %s failed", call_id, type(action).__name__)
                call = dm.machine.get(call_id)
                if call is not None and not call.ended:
                    queue[0:0] = self._tag(
                        call, self._hangup_actions(call, "unknown_error", "internal_error")
                    )

    @staticmethod
    def _tag(call: OneToOneCall, actions: list[Action]) -> list[CallAction]:
        return [CallAction(call.call_id, a) for a in actions]

    async def _act(self, room_id: str, dm: _Dm, call_id: str, action: Action) -> list[CallAction]:
        call = dm.machine.get(call_id)
        live = self._calls.get(call_id)
        match action:
            case SendEvent(event_type=event_type, content=content):
                out = dict(content)
                if live is not None and event_type in (HANGUP, REJECT):
                    out.update(live.extras)
                await self._send(room_id, event_type, out)
            case JoinConference():
                assert call is not None
                return self._tag(call, await self._join(room_id, call, action))
            case AcceptAnswer(sdp=sdp):
                if live is None or live.participant_id is None:
                    return []
                try:
                    await self._hub.accept_answer(live.participant_id, sdp)
                except HubError as exc:
                    assert call is not None
                    return self._tag(
                        call, self._hangup_actions(call, "user_media_failed", exc.code, str(exc))
                    )
            case ApplyOffer(sdp=sdp, stream_metadata=metadata):
                if live is None or live.participant_id is None or call is None:
                    return []
                try:
                    negotiated = await self._hub.apply_offer(
                        live.participant_id, sdp, stream_purposes(metadata)
                    )
                except HubError as exc:
                    return self._tag(
                        call, self._hangup_actions(call, "user_media_failed", exc.code, str(exc))
                    )
                return self._tag(
                    call,
                    call.negotiate_answer_ready(
                        negotiated.sdp, stream_metadata=stream_metadata_of(negotiated)
                    ),
                )
            case AddCandidates(candidates=candidates):
                if live is not None and live.participant_id is not None:
                    await self._add_candidates(live.participant_id, candidates)
            case MakeOffer():
                if call is None:
                    return []
                offer = live.relay_offer if live is not None else None
                if offer is None:
                    return self._tag(call, call.cancel_offer())
                assert live is not None
                live.relay_offer = None
                return self._tag(
                    call,
                    call.send_offer(
                        offer.sdp, now_ms=self._clock.wall_ms(), stream_metadata=stream_metadata_of(offer)
                    ),
                )
            case EndCall(reason=why):
                await self._end(call_id, why)
            case UpdateStreams():
                log.debug("DM call %s: remote stream metadata changed", call_id)
            case Ignore(why=why):
                log.debug("DM call %s in %s: ignored (%s)", call_id, room_id, why)
        return []

    async def _add_candidates(self, participant_id: str, candidates: Sequence[Any]) -> None:
        for entry in candidates:
            try:
                if isinstance(entry, Candidate):
                    await self._hub.add_ice_candidate(
                        participant_id, entry.candidate, entry.sdp_mid, entry.sdp_mline_index
                    )
                else:
                    await self._hub.add_ice_candidate(
                        participant_id, None, entry.sdp_mid, entry.sdp_mline_index
                    )
            except HubError as exc:
                # The relay's own SDP has what it needs; a refused candidate is not worth ending the call.
                log.info("candidate refused for %s: %s", participant_id, exc)

    async def _join(self, room_id: str, call: OneToOneCall, action: JoinConference) -> list[Action]:
        """An incoming call: pick the conference, join it with the caller's offer, answer."""
        user_id = call.remote_user_id
        conference_room = await self.pick_conference(user_id)
        if conference_room is None:
            await self._send(room_id, "m.room.message", notice(HOW_TO_PICK))
            return self._refuse(call, "no_conference", HOW_TO_PICK)
        live = _Call(call.call_id, room_id, user_id, conference_room)
        self._calls[call.call_id] = live
        try:
            joined = await self._hub.join(
                conference_room,
                Identity(user_id, "dm:" + (call.remote_party_id or call.call_id)),
                _Link(self, call.call_id),
                transport="dm",
                offer_sdp=action.offer_sdp,
                mode="mcu",
                stream_purposes=stream_purposes(action.stream_metadata),
                transport_data={"dm_room_id": room_id, "call_id": call.call_id, "party_id": self.party_id},
            )
        except HubError as exc:
            log.info("DM call %s from %s refused by the hub: %s (%s)", call.call_id, user_id, exc, exc.code)
            await self._send(room_id, "m.room.message", notice(f"I could not put you in the call: {exc}"))
            return self._refuse(call, exc.code, str(exc))
        live.participant_id = joined.participant_id
        log.info("DM call %s: %s joined the call of %s", call.call_id, user_id, conference_room)
        return call.answer_ready(
            joined.negotiated.sdp,
            now_ms=self._clock.wall_ms(),
            stream_metadata=stream_metadata_of(joined.negotiated),
        )

    def _refuse(self, call: OneToOneCall, code: str, message: str) -> list[Action]:
        """End a call the bot never answered: ``m.call.reject`` (spec), with our reason."""
        actions = call.hangup("unknown_error")
        content = build_reject(call.call_id, self.party_id)
        content.update({VISIO_REASON: code, VISIO_MESSAGE: message})
        return [SendEvent(REJECT, content) if isinstance(a, SendEvent) else a for a in actions]

    def _hangup_actions(
        self, call: OneToOneCall, reason: str, code: str, message: str | None = None
    ) -> list[Action]:
        live = self._calls.get(call.call_id)
        if live is not None:
            live.extras = {VISIO_REASON: code, **({VISIO_MESSAGE: message} if message else {})}
        if call.state is OneToOneState.JOINING:
            return self._refuse(call, code, message or code)
        return call.hangup(reason)

    async def _hangup(
        self, room_id: str, dm: _Dm, call: OneToOneCall, reason: str, code: str, message: str | None = None
    ) -> None:
        await self._run(room_id, self._tag(call, self._hangup_actions(call, reason, code, message)))

    async def on_membership(self, room_id: str, user_id: str, membership: str) -> None:
        """Spec "behaviour on room leave": the caller leaving its DM ends its calls there."""
        if membership == "join" or user_id == self._io.user_id:
            return
        for call_id, live in list(self._calls.items()):
            if live.dm_room_id == room_id and live.user_id == user_id:
                await self._end(call_id, f"{user_id} left the DM ({membership})")

    async def _end(self, call_id: str, why: str) -> None:
        live = self._calls.pop(call_id, None)
        log.info("DM call %s ended: %s", call_id, why)
        if live is not None and live.participant_id is not None:
            await self._hub.leave(live.participant_id, RemovalReason.LEFT)

    async def _send(self, room_id: str, event_type: str, content: dict[str, Any]) -> None:
        try:
            await self._io.send(room_id, event_type, content)
        except Exception as exc:  # the device's errors: the homeserver refused, the room is gone
            log.warning("could not send %s to %s: %s", event_type, room_id, exc)

    # ---- hub callbacks --------------------------------------------------------------------------------

    async def _relay_offer(self, call_id: str, negotiated: Negotiated) -> None:
        """The relay has a new offer for this participant (rare for MCU): m.call.negotiate."""
        live = self._calls.get(call_id)
        dm = self._dms.get(live.dm_room_id) if live else None
        if live is None or dm is None:
            return
        async with dm.lock:
            call = dm.machine.get(call_id)
            if call is None or call.ended:
                return
            live.relay_offer = negotiated
            await self._run(live.dm_room_id, self._tag(call, call.streams_changed()))

    async def _removed(self, call_id: str, reason: str) -> None:
        """The hub removed the participant: hang up with a fitting reason (no hub.leave: it is gone)."""
        live = self._calls.get(call_id)
        dm = self._dms.get(live.dm_room_id) if live else None
        if live is None or dm is None:
            return
        async with dm.lock:
            live.participant_id = None
            call = dm.machine.get(call_id)
            if call is None or call.ended:
                self._calls.pop(call_id, None)
                return
            if reason == RemovalReason.MEDIA_FAILED:
                view_connected = call.state is OneToOneState.CONNECTED
                spec_reason = "ice_timeout" if view_connected else "ice_failed"
            else:
                spec_reason = _REMOVAL_HANGUPS.get(reason, ("unknown_error", reason))[0]
            code = _REMOVAL_HANGUPS.get(reason, ("", reason))[1]
            await self._hangup(live.dm_room_id, dm, call, spec_reason, code, _REMOVAL_MESSAGES.get(reason))

    # ---- commands and conference choice ---------------------------------------------------------------

    async def on_command(self, event: RoomEvent, command: Command) -> tuple[str, str]:
        """``!visio join [room]`` and ``!visio ring`` (``dm_commands``): (reply text, metrics result)."""
        return await self._commands.on_command(event, command)

    async def pick_conference(self, user_id: str) -> str | None:
        """The room whose conference the user's DM call joins (``dm_choice`` rules), or None."""
        return await pick_conference(self.choices, self._store, self.directs, user_id, self._clock.now())

    async def ring(self, user_id: str, conference_room_id: str) -> str:
        """Ring ``user_id`` in their DM with the bot (created if needed) for the room's conference.
        Returns a line for people."""
        room = await self.directs.ensure(user_id)
        self.choices.rang(user_id, conference_room_id, self._clock.now())
        if not room.user_joined:
            self._pending = [p for p in self._pending if p.user_id != user_id]
            self._pending.append(_PendingRing(user_id, room.room_id, conference_room_id, self._clock.now()))
            return (
                f"{user_id}: I invited you to a direct chat with me; I will call you there once you accept."
            )
        return await self._ring_now(room.room_id, user_id, conference_room_id)

    async def _ring_now(self, dm_room_id: str, user_id: str, conference_room_id: str) -> str:
        dm = self._dm(dm_room_id)
        async with dm.lock:
            if dm.machine.active_call_with(user_id) is not None:
                return f"{user_id}: already in a call with me."
            call_id = new_voip_id()
            live = _Call(call_id, dm_room_id, user_id, conference_room_id)
            self._calls[call_id] = live
            try:
                joined = await self._hub.join(
                    conference_room_id,
                    Identity(user_id, "dm:" + call_id),
                    _Link(self, call_id),
                    transport="dm",
                    offer_sdp=None,
                    mode="mcu",
                    transport_data={"dm_room_id": dm_room_id, "call_id": call_id, "party_id": self.party_id},
                )
            except HubError as exc:
                self._calls.pop(call_id, None)
                return f"{user_id}: cannot ring ({exc})."
            live.participant_id = joined.participant_id
            actions = dm.machine.ring(
                call_id=call_id,
                invitee=user_id,
                offer_sdp=joined.negotiated.sdp,
                now_ms=self._clock.wall_ms(),
                lifetime_ms=self._ring_lifetime_ms,
                stream_metadata=stream_metadata_of(joined.negotiated),
            )
            if dm.machine.get(call_id) is None:  # refused (a call with the user became active)
                self._calls.pop(call_id, None)
                await self._hub.leave(joined.participant_id, RemovalReason.LEFT)
                return f"{user_id}: already in a call with me."
            await self._run(dm_room_id, actions)
        log.info(
            "ringing %s in %s for the call of %s (call %s)", user_id, dm_room_id, conference_room_id, call_id
        )
        return f"{user_id}: ringing."

    async def _pending_rings(self) -> None:
        now = self._clock.now()
        for pending in list(self._pending):
            room = None
            if now - pending.since > PENDING_DM_TTL_S:
                log.info(
                    "%s did not join the DM %s in time: ring dropped", pending.user_id, pending.dm_room_id
                )
            else:
                room = await self.directs.check(pending.dm_room_id, pending.user_id)
                if room is not None and not room.user_joined:
                    continue  # still waiting for the user to accept the DM
            if pending in self._pending:
                self._pending.remove(pending)
            if room is not None and await self._store.get_active_conference(pending.conference_room_id):
                await self._ring_now(pending.dm_room_id, pending.user_id, pending.conference_room_id)
