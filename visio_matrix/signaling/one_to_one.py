"""The bot's side of one 1:1 Matrix call (spec "Voice over IP", MSC2746) with an unmodified client.

Pure state machine, one per ``call_id``: inputs are parsed room events (``CallRoomEvent``) and relay
results from the shell; outputs are ``actions``. Time is wall-clock milliseconds, passed in.
``one_to_one_room.OneToOneRoom`` routes a room's events to its calls and resolves glare between them.

```
 incoming:  m.call.invite --> JOINING --answer_ready()--> CONNECTED --hangup either way--> ENDED
                                 |  (candidates buffered)    |  select_answer naming another party: ENDED
                                 +-- lifetime over ----------+-------------------------------> ENDED
 outgoing:  ring --> RINGING --first m.call.answer of the invitee (select_answer sent)--> CONNECTED
                        |  m.call.reject / m.call.hangup of the invitee, or lifetime over --> ENDED
```

Spec points kept here: an invite older than its ``lifetime`` is ignored; our own events echoed back
(same user and ``party_id``) are ignored; events of parties other than the one in the call are ignored;
the callee is the polite party when renegotiation offers cross.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

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
from visio_matrix.signaling.build import (
    build_answer,
    build_candidates,
    build_hangup,
    build_invite,
    build_negotiate,
    build_select_answer,
    build_stream_metadata_changed,
)
from visio_matrix.signaling.messages import (
    ANSWER,
    CANDIDATES,
    DEFAULT_LIMITS,
    HANGUP,
    INVITE,
    NEGOTIATE,
    SELECT_ANSWER,
    STREAM_METADATA_CHANGED,
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallMessage,
    CallNegotiate,
    CallReject,
    CallSelectAnswer,
    CallStreamMetadataChanged,
    CandidateEntry,
    EndOfCandidates,
    Limits,
    SignalingError,
    StreamMetadataMap,
)
from visio_matrix.signaling.negotiation import Negotiation, RemoteOffer
from visio_matrix.signaling.parse import parse_call_content

DEFAULT_RING_LIFETIME_MS: Final = 90_000  # the spec's minimal recommended lifetime
DEFAULT_NEGOTIATE_LIFETIME_MS: Final = 30_000
MAX_BUFFERED_CANDIDATES: Final = 400


@dataclass(frozen=True)
class CallRoomEvent:
    """A parsed ``m.call.*`` room event with what liveness checks need.

    ``age_ms`` is ``unsigned.age`` as delivered and ``received_ms`` the wall time the shell received the
    event: the spec measures an invite's age as ``age`` plus the time since reception, which is immune to
    a wrong local clock. Without them, ``origin_server_ts`` is used."""

    sender: str
    message: CallMessage
    event_id: str = ""
    origin_server_ts: int | None = None
    age_ms: int | None = None
    received_ms: int | None = None

    def age_at(self, now_ms: int) -> int:
        if self.age_ms is not None:
            since_received = now_ms - self.received_ms if self.received_ms is not None else 0
            return self.age_ms + max(0, since_received)
        if self.origin_server_ts is not None:
            return max(0, now_ms - self.origin_server_ts)
        return 0


def parse_room_call_event(
    event_type: str,
    content: object,
    *,
    sender: str,
    event_id: str = "",
    origin_server_ts: int | None = None,
    unsigned: Mapping[str, Any] | None = None,
    received_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> CallRoomEvent | SignalingError:
    """Parse a (decrypted) room event's type and content into a ``CallRoomEvent``."""
    message = parse_call_content(event_type, content, limits=limits)
    if isinstance(message, SignalingError):
        return message
    age = unsigned.get("age") if unsigned is not None else None
    age_ms = age if isinstance(age, int) and not isinstance(age, bool) and age >= 0 else None
    return CallRoomEvent(sender, message, event_id, origin_server_ts, age_ms, received_ms)


class Direction(enum.Enum):
    INCOMING = "incoming"  # the user called the bot
    OUTGOING = "outgoing"  # the bot rang the user


class OneToOneState(enum.Enum):
    JOINING = "joining"  # incoming invite accepted; waiting for the relay's answer
    RINGING = "ringing"  # the bot's invite is out; waiting for the invitee's answer
    CONNECTED = "connected"
    ENDED = "ended"


class OneToOneCall:
    """One 1:1 call, seen from the bot. Create with ``incoming`` or ``outgoing``."""

    def __init__(
        self,
        *,
        call_id: str,
        direction: Direction,
        bot_user_id: str,
        bot_party_id: str,
        remote_user_id: str,
        remote_party_id: str | None,
        state: OneToOneState,
        deadline_ms: int,
        send_end_of_candidates: bool = True,
    ) -> None:
        self.call_id = call_id
        self.direction = direction
        self.bot_user_id = bot_user_id
        self.bot_party_id = bot_party_id
        self.remote_user_id = remote_user_id
        self.remote_party_id = remote_party_id  # None: not selected yet (ringing), or a version 0 caller
        self.state = state
        self.remote_streams: StreamMetadataMap | None = None
        self._send_end_of_candidates = send_end_of_candidates
        self._deadline_ms = deadline_ms  # invite lifetime while JOINING / RINGING
        # Remote candidates received before the call is connected, per party (ringing: several may answer).
        self._buffered: dict[str | None, list[CandidateEntry]] = {}
        self._negotiation = Negotiation(polite=direction is Direction.INCOMING)

    # -- creation -----------------------------------------------------------------------------------------

    @classmethod
    def incoming(
        cls,
        event: CallRoomEvent,
        *,
        bot_user_id: str,
        bot_party_id: str,
        now_ms: int,
        send_end_of_candidates: bool = True,
    ) -> tuple[OneToOneCall | None, list[Action]]:
        """An ``m.call.invite`` to the bot: (call, [JoinConference]) or (None, [Ignore]) when it is not for
        the bot or has expired (no answer is sent then, per spec)."""
        invite = event.message
        if not isinstance(invite, CallInvite):
            raise ValueError("OneToOneCall.incoming: expected an m.call.invite")
        if event.sender == bot_user_id:
            return None, [Ignore("invite sent by the bot's own user")]
        if invite.invitee is not None and invite.invitee != bot_user_id:
            return None, [Ignore(f"invite meant for {invite.invitee}")]
        age = event.age_at(now_ms)
        if age >= invite.lifetime_ms:
            return None, [Ignore(f"invite expired: age {age} ms, lifetime {invite.lifetime_ms} ms")]
        call = cls(
            call_id=invite.call_id,
            direction=Direction.INCOMING,
            bot_user_id=bot_user_id,
            bot_party_id=bot_party_id,
            remote_user_id=event.sender,
            remote_party_id=invite.party_id,
            state=OneToOneState.JOINING,
            deadline_ms=now_ms + invite.lifetime_ms - age,
            send_end_of_candidates=send_end_of_candidates,
        )
        call.remote_streams = invite.stream_metadata
        return call, [JoinConference(invite.offer_sdp, invite.stream_metadata)]

    @classmethod
    def outgoing(
        cls,
        *,
        call_id: str,
        bot_user_id: str,
        bot_party_id: str,
        invitee: str,
        offer_sdp: str,
        now_ms: int,
        lifetime_ms: int = DEFAULT_RING_LIFETIME_MS,
        stream_metadata: StreamMetadataMap | None = None,
        send_end_of_candidates: bool = True,
    ) -> tuple[OneToOneCall, list[Action]]:
        """The bot rings ``invitee`` with the relay's offer."""
        call = cls(
            call_id=call_id,
            direction=Direction.OUTGOING,
            bot_user_id=bot_user_id,
            bot_party_id=bot_party_id,
            remote_user_id=invitee,
            remote_party_id=None,
            state=OneToOneState.RINGING,
            deadline_ms=now_ms + lifetime_ms,
            send_end_of_candidates=send_end_of_candidates,
        )
        content = build_invite(
            call_id, bot_party_id, offer_sdp, lifetime_ms, invitee=invitee, stream_metadata=stream_metadata
        )
        return call, [SendEvent(INVITE, content), *call._end_of_candidates()]

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.state is OneToOneState.ENDED

    @property
    def deadline_ms(self) -> int | None:
        """When ``tick`` has something to do (invite lifetime, unanswered renegotiation), if ever."""
        if self.state in (OneToOneState.JOINING, OneToOneState.RINGING):
            return self._deadline_ms
        if self.state is OneToOneState.CONNECTED:
            return self._negotiation.local_offer_deadline_ms
        return None

    # -- room events ----------------------------------------------------------------------------------------

    def receive(self, event: CallRoomEvent, now_ms: int) -> list[Action]:
        message = event.message
        if message.call_id != self.call_id:
            return [Ignore(f"event for call {message.call_id}, not {self.call_id}")]
        if event.sender == self.bot_user_id and message.party_id == self.bot_party_id:
            return [Ignore("remote echo of our own event")]
        if self.state is OneToOneState.ENDED:
            return [Ignore("call already ended")]
        if event.sender != self.remote_user_id:
            return [Ignore(f"event from {event.sender}, not a party of this call")]
        if self.direction is Direction.OUTGOING and self.state is OneToOneState.RINGING:
            return self._while_ringing(message)
        if message.party_id != self.remote_party_id:
            if isinstance(message, CallAnswer):
                return [Ignore("answer from another party after one was selected")]
            return [Ignore(f"event from party {message.party_id}, not the one in the call")]
        match message:
            case CallCandidates():
                if self.state is OneToOneState.CONNECTED:
                    return [AddCandidates(message.candidates)]
                return self._buffer(message.party_id, message.candidates)
            case CallSelectAnswer():
                if self.direction is Direction.OUTGOING:
                    return [Ignore("m.call.select_answer from the callee")]
                if message.selected_party_id == self.bot_party_id:
                    return [Ignore("the caller selected our answer")]
                self.state = OneToOneState.ENDED
                return [EndCall(f"answered elsewhere (party {message.selected_party_id})")]
            case CallHangup():
                self.state = OneToOneState.ENDED
                return [EndCall(f"remote hung up ({message.reason})")]
            case CallNegotiate():
                return self._negotiate(message)
            case CallStreamMetadataChanged():
                self.remote_streams = message.stream_metadata
                return [UpdateStreams(message.stream_metadata)]
            case CallInvite():
                return [Ignore("duplicate m.call.invite")]
            case CallAnswer() | CallReject():
                return [Ignore(f"{type(message).__name__} does not apply in state {self.state.value}")]
        return [Ignore("unhandled message")]  # pragma: no cover - the match above is exhaustive

    def _while_ringing(self, message: CallMessage) -> list[Action]:
        match message:
            case CallAnswer():
                # The first answer of the invitee wins; select_answer tells its other devices.
                self.state = OneToOneState.CONNECTED
                self.remote_party_id = message.party_id
                if message.stream_metadata is not None:
                    self.remote_streams = message.stream_metadata
                actions: list[Action] = [AcceptAnswer(message.answer_sdp, message.stream_metadata)]
                if message.party_id is not None:
                    content = build_select_answer(self.call_id, self.bot_party_id, message.party_id)
                    actions.append(SendEvent(SELECT_ANSWER, content))
                buffered = self._buffered.pop(message.party_id, [])
                self._buffered.clear()
                if buffered:
                    actions.append(AddCandidates(tuple(buffered)))
                return actions
            case CallCandidates():
                return self._buffer(message.party_id, message.candidates)
            case CallReject():
                self.state = OneToOneState.ENDED
                return [EndCall("the invitee rejected the call")]
            case CallHangup():
                self.state = OneToOneState.ENDED
                return [EndCall(f"the invitee hung up while ringing ({message.reason})")]
        return [Ignore(f"{type(message).__name__} while ringing")]

    def _buffer(self, party_id: str | None, candidates: tuple[CandidateEntry, ...]) -> list[Action]:
        total = sum(len(entries) for entries in self._buffered.values())
        room = max(0, MAX_BUFFERED_CANDIDATES - total)
        self._buffered.setdefault(party_id, []).extend(candidates[:room])
        if len(candidates) > room:
            return [Ignore(f"candidate buffer full: {len(candidates) - room} dropped")]
        return []

    def _negotiate(self, message: CallNegotiate) -> list[Action]:
        if self.state is not OneToOneState.CONNECTED:
            return [Ignore("m.call.negotiate before the call is connected")]
        if message.stream_metadata is not None:
            self.remote_streams = message.stream_metadata
        if message.description_type == "answer":
            if not self._negotiation.remote_answer():
                return [Ignore("negotiate answer without an offer of ours out")]
            return [AcceptAnswer(message.sdp, message.stream_metadata), *self._offer_if_wanted()]
        decision = self._negotiation.remote_offer()
        if decision is RemoteOffer.IGNORE_GLARE:
            return [Ignore("offers crossed and we are the impolite party (caller): ours wins")]
        if decision is RemoteOffer.IGNORE_BUSY:
            return [Ignore("remote offered again before we answered its previous offer")]
        rollback = decision is RemoteOffer.APPLY_WITH_ROLLBACK
        return [ApplyOffer(message.sdp, message.stream_metadata, rollback_local_offer=rollback)]

    # -- relay results and bot decisions --------------------------------------------------------------------

    def answer_ready(
        self, answer_sdp: str, *, now_ms: int, stream_metadata: StreamMetadataMap | None = None
    ) -> list[Action]:
        """The relay answered the caller's offer (after ``JoinConference``): send ``m.call.answer``."""
        if self.state is not OneToOneState.JOINING:
            return [Ignore(f"answer_ready in state {self.state.value}")]
        if now_ms >= self._deadline_ms:
            return self.tick(now_ms)
        self.state = OneToOneState.CONNECTED
        content = build_answer(self.call_id, self.bot_party_id, answer_sdp, stream_metadata=stream_metadata)
        actions: list[Action] = [SendEvent(ANSWER, content), *self._end_of_candidates()]
        buffered = self._buffered.pop(self.remote_party_id, [])
        self._buffered.clear()
        if buffered:
            actions.append(AddCandidates(tuple(buffered)))
        return actions + self._offer_if_wanted()

    def negotiate_answer_ready(
        self, sdp: str, *, stream_metadata: StreamMetadataMap | None = None
    ) -> list[Action]:
        """The relay answered the remote's renegotiation offer (after ``ApplyOffer``)."""
        if self.state is not OneToOneState.CONNECTED or not self._negotiation.local_answer_sent():
            return [Ignore("negotiate_answer_ready without a remote offer in progress")]
        content = build_negotiate(
            self.call_id, self.bot_party_id, "answer", sdp, stream_metadata=stream_metadata
        )
        return [SendEvent(NEGOTIATE, content), *self._offer_if_wanted()]

    def streams_changed(self) -> list[Action]:
        """What the relay sends this caller changed: [MakeOffer] now, or once the exchange in flight ends."""
        if self.state is OneToOneState.ENDED:
            return []
        self._negotiation.offer_wanted = True
        return self._offer_if_wanted()

    def send_offer(
        self,
        sdp: str,
        *,
        now_ms: int,
        lifetime_ms: int = DEFAULT_NEGOTIATE_LIFETIME_MS,
        stream_metadata: StreamMetadataMap | None = None,
    ) -> list[Action]:
        """Send the relay's offer asked for by ``MakeOffer`` as ``m.call.negotiate``."""
        if self.state is not OneToOneState.CONNECTED or not self._negotiation.offer_sent(now_ms, lifetime_ms):
            return [Ignore("send_offer without a MakeOffer pending")]
        content = build_negotiate(
            self.call_id,
            self.bot_party_id,
            "offer",
            sdp,
            lifetime_ms=lifetime_ms,
            stream_metadata=stream_metadata,
        )
        return [SendEvent(NEGOTIATE, content)]

    def cancel_offer(self) -> list[Action]:
        """The relay could not make the offer asked for by ``MakeOffer``."""
        self._negotiation.cancel_offer()
        return []

    def metadata_changed(self, stream_metadata: StreamMetadataMap) -> list[Action]:
        if self.state is not OneToOneState.CONNECTED:
            return [Ignore("stream metadata change before the call is connected")]
        content = build_stream_metadata_changed(self.call_id, self.bot_party_id, stream_metadata)
        return [SendEvent(STREAM_METADATA_CHANGED, content)]

    def hangup(self, reason: str = "user_hangup") -> list[Action]:
        """The bot ends the call: ``m.call.hangup`` then EndCall."""
        if self.state is OneToOneState.ENDED:
            return []
        self.state = OneToOneState.ENDED
        return [
            SendEvent(HANGUP, build_hangup(self.call_id, self.bot_party_id, reason)),
            EndCall(f"bot hung up ({reason})"),
        ]

    def tick(self, now_ms: int) -> list[Action]:
        """Expire what waited too long; call at ``deadline_ms``."""
        deadline = self.deadline_ms
        if deadline is None or now_ms < deadline:
            return []
        if self.state is OneToOneState.CONNECTED:
            return self.hangup("unknown_error")  # the remote never answered our renegotiation
        return self.hangup("invite_timeout")

    def _offer_if_wanted(self) -> list[Action]:
        if self.state is not OneToOneState.CONNECTED or not self._negotiation.next_offer():
            return []
        return [MakeOffer()]

    def _end_of_candidates(self) -> list[Action]:
        # The relay's SDP holds all its candidates; the spec still asks for an explicit end of candidates.
        if not self._send_end_of_candidates:
            return []
        return [
            SendEvent(CANDIDATES, build_candidates(self.call_id, self.bot_party_id, (EndOfCandidates(),)))
        ]
