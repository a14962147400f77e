"""All 1:1 calls of one room (a user's DM with the bot), seen from the bot: routing and glare.

Pure: routes each ``CallRoomEvent`` to its ``OneToOneCall`` by ``call_id``, ignores events already seen
(homeservers replay recent events after a restart), ignores duplicate invites, and resolves glare per
spec: when the bot has rung a user and an invite from that user arrives in the same room, the call
with the lexicographically lesser ``call_id`` continues. If the bot's call loses, it hangs it up and
takes the user's call; if it wins, the user's invite is ignored (their client drops it the same way).
Every action comes tagged with the call it belongs to (``CallAction``).
"""

from __future__ import annotations

from collections import deque
from typing import Final, NamedTuple

from visio_matrix.signaling.actions import Action, Ignore
from visio_matrix.signaling.messages import CallInvite, StreamMetadataMap
from visio_matrix.signaling.one_to_one import (
    DEFAULT_RING_LIFETIME_MS,
    CallRoomEvent,
    Direction,
    OneToOneCall,
    OneToOneState,
)

DEFAULT_REMEMBER_MS: Final = 10 * 60_000  # how long ended and ignored calls are remembered
DEFAULT_MAX_SEEN_EVENTS: Final = 1000


class CallAction(NamedTuple):
    call_id: str
    action: Action


class OneToOneRoom:
    def __init__(
        self,
        *,
        room_id: str,
        bot_user_id: str,
        bot_party_id: str,
        send_end_of_candidates: bool = True,
        remember_ms: int = DEFAULT_REMEMBER_MS,
        max_seen_events: int = DEFAULT_MAX_SEEN_EVENTS,
    ) -> None:
        self.room_id = room_id
        self.bot_user_id = bot_user_id
        self.bot_party_id = bot_party_id
        self._send_end_of_candidates = send_end_of_candidates
        self._remember_ms = remember_ms
        self._calls: dict[str, OneToOneCall] = {}
        self._finished: dict[str, int] = {}  # call_id -> when it ended or was ignored (wall ms)
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._max_seen = max_seen_events

    def get(self, call_id: str) -> OneToOneCall | None:
        return self._calls.get(call_id)

    def active_calls(self) -> list[OneToOneCall]:
        return [call for call in self._calls.values() if not call.ended]

    def active_call_with(self, user_id: str) -> OneToOneCall | None:
        for call in self._calls.values():
            if not call.ended and call.remote_user_id == user_id:
                return call
        return None

    @property
    def deadline_ms(self) -> int | None:
        deadlines = [d for call in self._calls.values() if (d := call.deadline_ms) is not None]
        return min(deadlines) if deadlines else None

    # -- inputs -----------------------------------------------------------------------------------------------

    def receive(self, event: CallRoomEvent, now_ms: int) -> list[CallAction]:
        call_id = event.message.call_id
        if event.event_id:
            if event.event_id in self._seen:
                return [CallAction(call_id, Ignore(f"event {event.event_id} already handled"))]
            self._remember_event(event.event_id)
        if isinstance(event.message, CallInvite):
            return self._invite(event, now_ms)
        call = self._calls.get(call_id)
        if call is None:
            why = (
                "event for a call ignored earlier"
                if call_id in self._finished
                else "event for an unknown call"
            )
            return [CallAction(call_id, Ignore(why))]
        return self._tagged(call, call.receive(event, now_ms), now_ms)

    def _invite(self, event: CallRoomEvent, now_ms: int) -> list[CallAction]:
        call_id = event.message.call_id
        if call_id in self._calls or call_id in self._finished:
            if event.sender == self.bot_user_id and event.message.party_id == self.bot_party_id:
                return [CallAction(call_id, Ignore("remote echo of our own invite"))]
            return [CallAction(call_id, Ignore("duplicate m.call.invite"))]
        call, actions = OneToOneCall.incoming(
            event,
            bot_user_id=self.bot_user_id,
            bot_party_id=self.bot_party_id,
            now_ms=now_ms,
            send_end_of_candidates=self._send_end_of_candidates,
        )
        if call is None:  # expired, or not for the bot: it takes no part in glare either
            self._finished[call_id] = now_ms
            return [CallAction(call_id, action) for action in actions]
        result: list[CallAction] = []
        ours = self._ringing_to(event.sender)
        if ours is not None:
            if ours.call_id < call_id:
                self._finished[call_id] = now_ms
                return [CallAction(call_id, Ignore(f"glare: our call {ours.call_id} has the lesser call_id"))]
            # Ours loses: abort it (its hangup also stops the user's other devices ringing).
            result = self._tagged(ours, ours.hangup("user_hangup"), now_ms)
        self._calls[call_id] = call
        return result + self._tagged(call, actions, now_ms)

    def ring(
        self,
        *,
        call_id: str,
        invitee: str,
        offer_sdp: str,
        now_ms: int,
        lifetime_ms: int = DEFAULT_RING_LIFETIME_MS,
        stream_metadata: StreamMetadataMap | None = None,
    ) -> list[CallAction]:
        """The bot rings ``invitee``. Refused (Ignore) while a call with that user is active: the spec's
        "invite received while preparing to send" rule means the incoming call is taken instead."""
        if call_id in self._calls or call_id in self._finished:
            raise ValueError(f"ring: call_id {call_id!r} already used in this room")
        existing = self.active_call_with(invitee)
        if existing is not None:
            return [
                CallAction(call_id, Ignore(f"a call with {invitee} is already active ({existing.call_id})"))
            ]
        call, actions = OneToOneCall.outgoing(
            call_id=call_id,
            bot_user_id=self.bot_user_id,
            bot_party_id=self.bot_party_id,
            invitee=invitee,
            offer_sdp=offer_sdp,
            now_ms=now_ms,
            lifetime_ms=lifetime_ms,
            stream_metadata=stream_metadata,
            send_end_of_candidates=self._send_end_of_candidates,
        )
        self._calls[call_id] = call
        return self._tagged(call, actions, now_ms)

    def tick(self, now_ms: int) -> list[CallAction]:
        """Expire calls past their deadline, and forget calls that ended long ago."""
        result: list[CallAction] = []
        for call in list(self._calls.values()):
            result += self._tagged(call, call.tick(now_ms), now_ms)
        for call_id, finished_ms in list(self._finished.items()):
            if now_ms - finished_ms >= self._remember_ms:
                del self._finished[call_id]
                self._calls.pop(call_id, None)
        return result

    # -- helpers ------------------------------------------------------------------------------------------------

    def _ringing_to(self, user_id: str) -> OneToOneCall | None:
        for call in self._calls.values():
            if (
                call.direction is Direction.OUTGOING
                and call.state is OneToOneState.RINGING
                and call.remote_user_id == user_id
            ):
                return call
        return None

    def _tagged(self, call: OneToOneCall, actions: list[Action], now_ms: int) -> list[CallAction]:
        if call.ended and call.call_id not in self._finished:
            self._finished[call.call_id] = now_ms
        return [CallAction(call.call_id, action) for action in actions]

    def _remember_event(self, event_id: str) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        while len(self._seen_order) > self._max_seen:
            self._seen.discard(self._seen_order.popleft())
