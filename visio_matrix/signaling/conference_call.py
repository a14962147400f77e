"""The bot's side of one conference call with one participant device: a pure state machine.

Inputs are parsed ``ConferenceMessage`` values (already routed by the shell to this call: same Olm sender
user and device, same ``call_id``) and calls from the shell with relay results; outputs are ``actions``.
Time is passed in as wall-clock milliseconds.

```
  participant m.call.invite --> JOINING --answer_ready()----------> CONNECTED --+ renegotiation:
  reinvite() after a restart --> RINGING --m.call.answer------------^  |    ^    | MakeOffer -> send_offer,
                                   |                                   |    +----+ or ApplyOffer ->
       lifetime over (tick),       |                                   |           negotiate_answer_ready
       m.call.reject (RINGING)     v                                   v
                                 ENDED <------- hangup either way -----+
```

Rules kept here: ``seq`` strictly increases per sender and call (lower or equal = duplicate, dropped);
``dest_session_id`` must be "" or the bot's session (else it was meant for a previous run of the bot);
the participant's ``sender_session_id`` and ``party_id`` are fixed by its invite (or its answer to a
re-invite); candidates before the call is connected are buffered; when offers cross, the bot's wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

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
from visio_matrix.signaling.build import Content
from visio_matrix.signaling.conference import (
    ConferenceMessage,
    GroupFields,
    VisioReason,
    build_conference_answer,
    build_conference_hangup,
    build_conference_invite,
    build_conference_negotiate,
    build_conference_stream_metadata_changed,
    invite_expired,
)
from visio_matrix.signaling.messages import (
    ANSWER,
    HANGUP,
    INVITE,
    NEGOTIATE,
    STREAM_METADATA_CHANGED,
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallNegotiate,
    CallReject,
    CallSelectAnswer,
    CallStreamMetadataChanged,
    CandidateEntry,
    StreamMetadataMap,
)
from visio_matrix.signaling.negotiation import Negotiation, RemoteOffer

DEFAULT_INVITE_LIFETIME_MS: Final = 60_000
DEFAULT_NEGOTIATE_LIFETIME_MS: Final = 30_000
MAX_BUFFERED_CANDIDATES: Final = 400


@dataclass(frozen=True)
class BotEndpoint:
    """The bot's side of the call: its party id, its device, and its session id (new at every start)."""

    party_id: str
    device_id: str
    session_id: str


class ConferenceState(enum.Enum):
    JOINING = "joining"  # participant invited; waiting for the relay's answer
    RINGING = "ringing"  # bot re-invited after a restart; waiting for the participant's answer
    CONNECTED = "connected"
    ENDED = "ended"


class ConferenceCallState:
    """One call between the bot and one participant device. Create with ``from_invite`` or ``reinvite``."""

    def __init__(
        self,
        *,
        call_id: str,
        room_id: str,
        conf_id: str,
        bot: BotEndpoint,
        state: ConferenceState,
        remote_party_id: str | None,
        remote_session_id: str,
        deadline_ms: int | None,
        last_remote_seq: int = -1,
    ) -> None:
        self.call_id = call_id
        self.room_id = room_id
        self.conf_id = conf_id
        self.bot = bot
        self.state = state
        self.remote_party_id = remote_party_id
        self.remote_session_id = remote_session_id
        self.last_remote_seq = last_remote_seq
        self.remote_streams: StreamMetadataMap | None = None
        self._deadline_ms = deadline_ms  # invite lifetime while JOINING/RINGING
        self._next_seq = 0
        self._buffered: list[CandidateEntry] = []
        self._negotiation = Negotiation(polite=False)  # the bot's offer always wins

    # -- creation ---------------------------------------------------------------------------------------

    @classmethod
    def from_invite(
        cls, invite: ConferenceMessage, bot: BotEndpoint, *, now_ms: int, received_age_ms: int = 0
    ) -> tuple[ConferenceCallState, list[Action]]:
        """A participant's ``m.call.invite`` (access already checked by the shell). An expired invite gets a
        hangup (``invite_expired``) and an ENDED call."""
        message = invite.message
        if not isinstance(message, CallInvite) or invite.room_id is None:
            raise ValueError("from_invite: expected a parsed conference m.call.invite")
        call = cls(
            call_id=message.call_id,
            room_id=invite.room_id,
            conf_id=invite.group.conf_id,
            bot=bot,
            state=ConferenceState.JOINING,
            remote_party_id=message.party_id,
            remote_session_id=invite.group.sender_session_id,
            deadline_ms=now_ms + message.lifetime_ms - received_age_ms,
            last_remote_seq=invite.group.seq,
        )
        call.remote_streams = message.stream_metadata
        if invite_expired(message, received_age_ms):
            return call, call._end_with_hangup(
                VisioReason.INVITE_EXPIRED, None, "invite expired", joined=False
            )
        join = JoinConference(
            message.offer_sdp, message.stream_metadata, invite.room_id, invite.group.conf_id
        )
        return call, [join]

    @classmethod
    def reinvite(
        cls,
        *,
        call_id: str,
        replaces: str,
        room_id: str,
        conf_id: str,
        bot: BotEndpoint,
        participant_session_id: str,
        offer_sdp: str,
        stream_metadata: StreamMetadataMap | None,
        now_ms: int,
        lifetime_ms: int = DEFAULT_INVITE_LIFETIME_MS,
    ) -> tuple[ConferenceCallState, list[Action]]:
        """After a restart: the bot offers a NEW call to a participant it had, replacing ``replaces``."""
        call = cls(
            call_id=call_id,
            room_id=room_id,
            conf_id=conf_id,
            bot=bot,
            state=ConferenceState.RINGING,
            remote_party_id=None,
            remote_session_id=participant_session_id,
            deadline_ms=now_ms + lifetime_ms,
        )
        content = build_conference_invite(
            call_id,
            bot.party_id,
            call._group(),
            room_id,
            offer_sdp,
            lifetime_ms,
            stream_metadata=stream_metadata,
            replaces=replaces,
        )
        return call, [SendEvent(INVITE, content)]

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.state is ConferenceState.ENDED

    @property
    def bot_offer_pending(self) -> bool:
        """A bot offer was asked for (``MakeOffer``) or sent, and is not answered yet."""
        return self._negotiation.local_offer_pending

    @property
    def deadline_ms(self) -> int | None:
        """When ``tick`` has something to do (invite lifetime, unanswered bot offer), if ever."""
        if self.state in (ConferenceState.JOINING, ConferenceState.RINGING):
            return self._deadline_ms
        if self.state is ConferenceState.CONNECTED:
            return self._negotiation.local_offer_deadline_ms
        return None

    # -- inputs from the participant ---------------------------------------------------------------------

    def receive(self, incoming: ConferenceMessage, now_ms: int) -> list[Action]:
        """One message from the participant's device for this call."""
        if self.state is ConferenceState.ENDED:
            return [Ignore("call already ended")]
        refusal = self._check_envelope(incoming)
        if refusal is not None:
            return [refusal]
        self.last_remote_seq = incoming.group.seq
        message = incoming.message
        match message:
            case CallCandidates():
                return self._candidates(message.candidates)
            case CallAnswer():
                return self._answer(incoming, message)
            case CallNegotiate():
                return self._negotiate(message)
            case CallHangup():
                self.state = ConferenceState.ENDED
                return [EndCall(f"participant hung up ({message.reason})")]
            case CallReject():
                if self.state is ConferenceState.RINGING:
                    self.state = ConferenceState.ENDED
                    return [EndCall("participant rejected the re-invite")]
                return [Ignore("m.call.reject outside a re-invite")]
            case CallStreamMetadataChanged():
                self.remote_streams = message.stream_metadata
                return [UpdateStreams(message.stream_metadata)]
            case CallInvite():
                return [Ignore("duplicate m.call.invite")]
            case CallSelectAnswer():
                return [Ignore("m.call.select_answer is not used in conferences")]
        return [Ignore("unhandled message")]  # pragma: no cover - the match above is exhaustive

    def _check_envelope(self, incoming: ConferenceMessage) -> Ignore | None:
        group = incoming.group
        if incoming.call_id != self.call_id:
            return Ignore(f"message for call {incoming.call_id}, not {self.call_id}")
        if group.dest_session_id not in ("", self.bot.session_id):
            return Ignore("dest_session_id names another session of the bot (stale message)")
        if group.seq <= self.last_remote_seq:
            return Ignore(f"seq {group.seq} not above {self.last_remote_seq} (duplicate or reordered)")
        if self.state is ConferenceState.RINGING and self.remote_party_id is None:
            return None  # the participant's party and session are fixed by its answer
        if group.sender_session_id != self.remote_session_id:
            return Ignore("sender_session_id is not the participant's session for this call")
        if incoming.party_id != self.remote_party_id:
            return Ignore("party_id is not the participant's party for this call")
        return None

    def _candidates(self, candidates: tuple[CandidateEntry, ...]) -> list[Action]:
        if self.state is ConferenceState.CONNECTED:
            return [AddCandidates(candidates)]
        room = MAX_BUFFERED_CANDIDATES - len(self._buffered)
        self._buffered.extend(candidates[:room])
        if len(candidates) > room:
            return [Ignore(f"candidate buffer full: {len(candidates) - room} dropped")]
        return []

    def _answer(self, incoming: ConferenceMessage, message: CallAnswer) -> list[Action]:
        if self.state is not ConferenceState.RINGING:
            return [Ignore("m.call.answer but the bot is not ringing")]
        self.state = ConferenceState.CONNECTED
        self.remote_party_id = message.party_id
        self.remote_session_id = incoming.group.sender_session_id
        if message.stream_metadata is not None:
            self.remote_streams = message.stream_metadata
        actions: list[Action] = [AcceptAnswer(message.answer_sdp, message.stream_metadata)]
        return actions + self._flush_candidates() + self._offer_if_wanted()

    def _negotiate(self, message: CallNegotiate) -> list[Action]:
        if self.state is not ConferenceState.CONNECTED:
            return [Ignore("m.call.negotiate before the call is connected")]
        if message.stream_metadata is not None:
            self.remote_streams = message.stream_metadata
        if message.description_type == "answer":
            if not self._negotiation.remote_answer():
                return [Ignore("negotiate answer without a bot offer out")]
            return [AcceptAnswer(message.sdp, message.stream_metadata), *self._offer_if_wanted()]
        decision = self._negotiation.remote_offer()
        if decision is RemoteOffer.IGNORE_GLARE:
            return [Ignore("participant offer crossed the bot's offer: the bot's offer wins")]
        if decision is RemoteOffer.IGNORE_BUSY:
            return [Ignore("participant offered again before the bot answered its previous offer")]
        return [ApplyOffer(message.sdp, message.stream_metadata)]

    # -- inputs from the shell ---------------------------------------------------------------------------

    def answer_ready(
        self, answer_sdp: str, *, conf_id: str, stream_metadata: StreamMetadataMap | None
    ) -> list[Action]:
        """The relay answered the invite (after ``JoinConference``); ``conf_id`` is the conference joined."""
        if self.state is not ConferenceState.JOINING:
            return [Ignore(f"answer_ready in state {self.state.value}")]
        self.conf_id = conf_id
        self.state = ConferenceState.CONNECTED
        content = build_conference_answer(
            self.call_id, self.bot.party_id, self._group(), answer_sdp, stream_metadata=stream_metadata
        )
        return [SendEvent(ANSWER, content), *self._flush_candidates(), *self._offer_if_wanted()]

    def negotiate_answer_ready(
        self, sdp: str, *, stream_metadata: StreamMetadataMap | None = None
    ) -> list[Action]:
        """The relay answered the participant's offer (after ``ApplyOffer``)."""
        if self.state is not ConferenceState.CONNECTED or not self._negotiation.local_answer_sent():
            return [Ignore("negotiate_answer_ready without a participant offer in progress")]
        content = build_conference_negotiate(
            self.call_id, self.bot.party_id, self._group(), "answer", sdp, stream_metadata=stream_metadata
        )
        return [SendEvent(NEGOTIATE, content), *self._offer_if_wanted()]

    def streams_changed(self) -> list[Action]:
        """The set of streams this participant receives changed: ask for a new offer now, or once the
        exchange in flight completes."""
        if self.state is ConferenceState.ENDED:
            return []
        self._negotiation.offer_wanted = True
        return self._offer_if_wanted()

    def send_offer(
        self,
        sdp: str,
        *,
        stream_metadata: StreamMetadataMap,
        now_ms: int,
        lifetime_ms: int = DEFAULT_NEGOTIATE_LIFETIME_MS,
    ) -> list[Action]:
        """Send the relay's offer asked for by ``MakeOffer``."""
        if self.state is not ConferenceState.CONNECTED or not self._negotiation.offer_sent(
            now_ms, lifetime_ms
        ):
            return [Ignore("send_offer without a MakeOffer pending")]
        content = build_conference_negotiate(
            self.call_id,
            self.bot.party_id,
            self._group(),
            "offer",
            sdp,
            lifetime_ms=lifetime_ms,
            stream_metadata=stream_metadata,
        )
        return [SendEvent(NEGOTIATE, content)]

    def cancel_offer(self) -> list[Action]:
        """The relay could not make the offer asked for by ``MakeOffer``: forget it (ask again later with
        ``streams_changed``)."""
        self._negotiation.cancel_offer()
        return []

    def metadata_changed(self, stream_metadata: StreamMetadataMap) -> list[Action]:
        """Mute state (or owner) of streams the participant receives changed, without new streams."""
        if self.state is not ConferenceState.CONNECTED:
            return [Ignore("stream metadata change before the call is connected")]
        content = build_conference_stream_metadata_changed(
            self.call_id, self.bot.party_id, self._group(), stream_metadata
        )
        return [SendEvent(STREAM_METADATA_CHANGED, content)]

    def hangup(self, visio_reason: VisioReason, message: str | None = None) -> list[Action]:
        """The bot ends the call (conference ended, member left, media failed...)."""
        if self.state is ConferenceState.ENDED:
            return []
        return self._end_with_hangup(visio_reason, message, f"bot hung up ({visio_reason})")

    def tick(self, now_ms: int) -> list[Action]:
        """Expire what waited too long; call at ``deadline_ms``."""
        deadline = self.deadline_ms
        if deadline is None or now_ms < deadline:
            return []
        if self.state is ConferenceState.CONNECTED:
            return self._end_with_hangup(
                VisioReason.MEDIA_FAILED,
                "The renegotiation was not answered in time.",
                "bot offer not answered",
            )
        return self._end_with_hangup(
            VisioReason.INVITE_EXPIRED, None, f"invite lifetime over while {self.state.value}"
        )

    # -- helpers -------------------------------------------------------------------------------------------

    def _group(self) -> GroupFields:
        seq = self._next_seq
        self._next_seq += 1
        return GroupFields(
            conf_id=self.conf_id,
            device_id=self.bot.device_id,
            sender_session_id=self.bot.session_id,
            dest_session_id=self.remote_session_id,
            seq=seq,
        )

    def _flush_candidates(self) -> list[Action]:
        if not self._buffered:
            return []
        buffered, self._buffered = tuple(self._buffered), []
        return [AddCandidates(buffered)]

    def _offer_if_wanted(self) -> list[Action]:
        if self.state is not ConferenceState.CONNECTED or not self._negotiation.next_offer():
            return []
        return [MakeOffer()]

    def _end_with_hangup(
        self, visio_reason: VisioReason, message: str | None, why: str, *, joined: bool = True
    ) -> list[Action]:
        self.state = ConferenceState.ENDED
        content: Content = build_conference_hangup(
            self.call_id, self.bot.party_id, self._group(), visio_reason, message
        )
        return [SendEvent(HANGUP, content), EndCall(why)] if joined else [SendEvent(HANGUP, content)]
