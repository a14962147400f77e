"""The bot's behaviour in rooms: accepting invites, answering ``!visio`` commands, call records.

Input: room events from appservice transactions (already de-duplicated). Encrypted events are
decrypted with the bot's device; one whose room key has not arrived yet is parked and retried after
each /sync of the device (keys travel as to-device messages), and given up after ``pending_ttl``.
Output: replies and call-state notices in the room (encrypted in encrypted rooms), conference
records in the store.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from visio_matrix.appservice.events import RoomEvent, Transaction
from visio_matrix.calls.commands import HELP_TEXT, Command, parse_command
from visio_matrix.calls.hub_api import ConferenceEnded
from visio_matrix.calls.policy import may_act
from visio_matrix.clock import Clock
from visio_matrix.config.model import PolicyConfig
from visio_matrix.crypto.bot_device import Decrypted, Undecryptable
from visio_matrix.metrics import Metrics
from visio_matrix.storage import ConferenceExistsError, ConferenceRecord
from visio_matrix.tasks import TaskOwner
from visio_matrix.web.lobby import LobbyDecision, LobbyError

log = logging.getLogger(__name__)

JOIN_RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # then one last try, whose error is logged with the event


class RoomIO(Protocol):
    """What the bot needs from its Matrix device (``crypto.bot_device.BotDevice``)."""

    user_id: str

    async def join(self, room_id: str) -> None: ...

    async def leave(self, room_id: str) -> None: ...

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str: ...

    async def room_state(self, room_id: str) -> list[dict[str, Any]]: ...

    def decrypt(self, event: RoomEvent) -> Decrypted | Undecryptable: ...

    async def wait_for_sync(self, timeout: float) -> bool: ...


# -- DM calls (H7): the 1:1 call transport plugs in here ------------------------------------------
class CallEvents(Protocol):
    """``calls.dm_calls.DmCalls``: gets every ``m.call.*`` room event (decrypted when it was
    encrypted) and the ``join``/``ring`` commands, whose reply text and metrics result it returns."""

    async def on_call_event(self, event: RoomEvent, event_type: str, content: dict[str, Any]) -> None: ...

    async def on_command(self, event: RoomEvent, command: Command) -> tuple[str, str]: ...

    async def on_membership(self, room_id: str, user_id: str, membership: str) -> None: ...


# -- end DM calls (H7) ------------------------------------------------------------------------------


class GuestControl(Protocol):
    """Guests by link (``web.guest_api.GuestService``): ``!visio link`` / ``admit`` / ``deny``."""

    @property
    def link_lifetime_s(self) -> float: ...

    def new_link_url(self, room_id: str) -> str: ...

    def admit(self, room_id: str, name: str, by_user: str) -> LobbyDecision: ...

    def deny(self, room_id: str, name: str, by_user: str) -> LobbyDecision: ...


class ConferenceStore(Protocol):
    async def create_conference(self, room_id: str, started_by: str, now_ms: int) -> ConferenceRecord: ...

    async def get_active_conference(self, room_id: str) -> ConferenceRecord | None: ...

    async def end_conference(
        self, conference_id: str, ended_by: str, now_ms: int
    ) -> ConferenceRecord | None: ...

    async def set_conference_state_event(self, conference_id: str, event_id: str) -> None: ...

    async def list_active_conferences(self) -> list[ConferenceRecord]: ...


class ConferenceControl(Protocol):
    """Starting and ending a room's conference (``calls.hub.ConferenceHub``)."""

    async def start_conference(self, room_id: str, started_by: str) -> ConferenceRecord: ...

    async def end_conference(self, room_id: str, ended_by: str) -> ConferenceEnded | None: ...

    async def on_membership(self, room_id: str, user_id: str, membership: str) -> None: ...


def format_duration(ms: int) -> str:
    seconds = max(0, ms // 1000)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def summary_text(ended: ConferenceEnded) -> str:
    """ "📴 Call ended by X after 2m05s. Participants: A, B." (also used by the room status)."""
    duration = format_duration(ended.ended_at_ms - ended.started_at_ms)
    who = f" by {ended.ended_by}" if ended.ended_by else " (everyone left)"
    people = ", ".join(ended.participants) if ended.participants else "nobody joined"
    return f"📴 Call ended{who} after {duration}. Participants: {people}."


def notice(body: str, reply_to: str | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.notice", "body": body}
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


class RoomBot:
    def __init__(
        self,
        io: RoomIO,
        store: ConferenceStore,
        policy: PolicyConfig,
        clock: Clock,
        metrics: Metrics,
        pending_ttl: float = 120.0,
        call_events: CallEvents | None = None,  # DM calls (H7)
        *,
        conferences: ConferenceControl,
        guests: GuestControl | None = None,
    ) -> None:
        self._io = io
        self._store = store
        self._conferences = conferences
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._pending_ttl = pending_ttl
        self._call_events = call_events  # DM calls (H7)
        self.guests = guests  # settable after construction (the wiring builds it later)
        self._pending: list[tuple[RoomEvent, float]] = []
        self._tasks = TaskOwner("room-bot")

    async def start(self) -> None:
        active = await self._store.list_active_conferences()
        self._metrics.active_conferences.set(len(active))
        self._tasks.spawn(self._retry_loop(), "retry-decrypt")

    async def stop(self) -> None:
        await self._tasks.close()
        if self._pending:
            log.warning("stopping with %d undecrypted events still waiting for keys", len(self._pending))

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ---- EventSink ------------------------------------------------------------------------------

    async def on_ephemeral(self, txn: Transaction) -> None:
        # MSC2409/MSC3202 data: the device's /sync loop already receives the same to-device
        # messages and device lists on stock homeservers; feeding both would consume one-time keys
        # twice, so they are only counted here.
        log.debug(
            "transaction carried %d to-device and %d ephemeral events (handled by /sync)",
            len(txn.to_device),
            len(txn.ephemeral),
        )

    async def on_room_event(self, event: RoomEvent) -> None:
        if event.sender == self._io.user_id:
            return
        if event.type == "m.room.member" and event.state_key == self._io.user_id:
            await self._on_own_membership(event)
        elif event.type == "m.room.member" and event.state_key:
            membership = event.content.get("membership")
            membership = membership if isinstance(membership, str) else "leave"
            await self._conferences.on_membership(event.room_id, event.state_key, membership)
            if self._call_events is not None:
                await self._call_events.on_membership(event.room_id, event.state_key, membership)
        elif event.type == "m.room.message":
            await self._on_message(event, event.content, encrypted=False)
        elif event.type == "m.room.encrypted":
            await self._on_encrypted(event)
        elif event.type.startswith("m.call.") and self._call_events is not None:  # DM calls (H7)
            await self._call_events.on_call_event(event, event.type, event.content)

    # ---- membership -----------------------------------------------------------------------------

    async def _on_own_membership(self, event: RoomEvent) -> None:
        membership = event.content.get("membership")
        if membership != "invite":
            log.info("bot membership in %s is now %s (by %s)", event.room_id, membership, event.sender)
            return
        if not self._server_allowed(event.sender) and not self._policy.link_allowed(
            event.sender.partition(":")[2]
        ):
            log.warning(
                "refusing invite to %s from %s: server not allowed by policy", event.room_id, event.sender
            )
            await self._io.leave(event.room_id)
            return
        log.info("joining %s on invite from %s", event.room_id, event.sender)
        for delay in JOIN_RETRY_DELAYS_S:
            try:
                await self._io.join(event.room_id)
                break
            except Exception as exc:
                # An invite over federation can reach us before our homeserver lets us join with it
                # ("You are not invited"): try again shortly.
                log.info("joining %s failed (%s): again in %.1fs", event.room_id, exc, delay)
                await asyncio.sleep(delay)
        else:
            await self._io.join(event.room_id)
        await self._io.send(
            event.room_id, "m.room.message", notice("Hello! Type !visio help to see what I can do.")
        )

    def _server_allowed(self, user_id: str) -> bool:
        return self._policy.user_allowed(user_id)

    # ---- messages -------------------------------------------------------------------------------

    async def _on_encrypted(self, event: RoomEvent) -> None:
        result = self._io.decrypt(event)
        if isinstance(result, Undecryptable):
            if result.waiting_for_keys:
                self._metrics.decryption.labels(outcome="waiting").inc()
                log.info(
                    "event %s in %s not decryptable yet (%s): waiting for keys",
                    event.event_id,
                    event.room_id,
                    result.reason,
                )
                self._pending.append((event, self._clock.now()))
            else:
                self._metrics.decryption.labels(outcome="failed").inc()
                log.warning("cannot decrypt %s in %s: %s", event.event_id, event.room_id, result.reason)
            return
        self._metrics.decryption.labels(outcome="ok").inc()
        await self._on_decrypted(event, result)

    async def _on_decrypted(self, event: RoomEvent, result: Decrypted) -> None:
        if result.type == "m.room.message":
            await self._on_message(event, result.content, encrypted=True)
        elif result.type.startswith("m.call.") and self._call_events is not None:  # DM calls (H7)
            await self._call_events.on_call_event(event, result.type, result.content)

    async def _retry_loop(self) -> None:
        while True:
            await self._io.wait_for_sync(timeout=30.0)
            if self._pending:
                await self.retry_pending()

    async def retry_pending(self) -> None:
        pending, self._pending = self._pending, []
        now = self._clock.now()
        for event, since in pending:
            result = self._io.decrypt(event)
            if isinstance(result, Decrypted):
                self._metrics.decryption.labels(outcome="ok_late").inc()
                try:
                    await self._on_decrypted(event, result)
                except Exception:
                    log.exception("error while handling late-decrypted event %s", event.event_id)
            elif result.waiting_for_keys and now - since < self._pending_ttl:
                self._pending.append((event, since))
            else:
                self._metrics.decryption.labels(outcome="gave_up").inc()
                log.warning("gave up decrypting %s in %s: %s", event.event_id, event.room_id, result.reason)

    async def _on_message(self, event: RoomEvent, content: dict[str, Any], encrypted: bool) -> None:
        command = parse_command(content.get("body"))
        if command is None:
            return
        log.info(
            "command %s from %s in %s (encrypted=%s)", command.name, event.sender, event.room_id, encrypted
        )
        if not self._server_allowed(event.sender):
            if self._policy.link_allowed(event.sender.partition(":")[2]):
                # A linked ministry's user: its own bot answers (one call, each ministry serving its own).
                log.info("command from %s left to its own ministry's bot", event.sender)
                return
            await self._reply(
                event, "Sorry, users of your homeserver may not use this service.", command, "denied"
            )
            return
        handler = {
            "help": self._help,
            "start": self._start,
            "status": self._status,
            "stop": self._stop,
            "join": self._call_command,  # DM calls (H7)
            "ring": self._call_command,  # DM calls (H7)
            "link": self._guest_link,
            "admit": self._guest_decision,
            "deny": self._guest_decision,
        }.get(command.name, self._unknown)
        await handler(event, command)

    async def _reply(self, event: RoomEvent, text: str, command: Command, result: str) -> str:
        self._metrics.commands.labels(command=command.name, result=result).inc()
        return await self._io.send(event.room_id, "m.room.message", notice(text, reply_to=event.event_id))

    async def _check_power(self, event: RoomEvent, required: int, action: str) -> str | None:
        state = await self._io.room_state(event.room_id)
        power_levels = next((e.get("content") for e in state if e.get("type") == "m.room.power_levels"), None)
        create_event = next((e for e in state if e.get("type") == "m.room.create"), None)
        decision = may_act(event.sender, required, power_levels, create_event, action)
        return None if decision.allowed else decision.reason

    async def _help(self, event: RoomEvent, command: Command) -> None:
        await self._reply(event, HELP_TEXT, command, "ok")

    # -- DM calls (H7) --------------------------------------------------------------------------
    async def _call_command(self, event: RoomEvent, command: Command) -> None:
        if self._call_events is None:
            await self._reply(event, "Calls through direct chats are not enabled here.", command, "disabled")
            return
        text, result = await self._call_events.on_command(event, command)
        await self._reply(event, text, command, result)

    # -- end DM calls (H7) ----------------------------------------------------------------------

    # -- guests by link -------------------------------------------------------------------------
    async def _guest_link(self, event: RoomEvent, command: Command) -> None:
        if self.guests is None:
            await self._reply(event, "Guest links are not enabled on this service.", command, "disabled")
            return
        url = self.guests.new_link_url(event.room_id)
        valid = format_duration(int(self.guests.link_lifetime_s * 1000))
        await self._reply(
            event,
            f"Guest link for this room (valid {valid}; guests wait until a member types "
            f"!visio admit <name>): {url}",
            command,
            "ok",
        )

    async def _guest_decision(self, event: RoomEvent, command: Command) -> None:
        if self.guests is None:
            await self._reply(event, "Guest links are not enabled on this service.", command, "disabled")
            return
        name = " ".join(command.args).strip()
        if not name:
            await self._reply(event, f"Usage: !visio {command.name} <name>", command, "usage")
            return
        action = "Letting a guest in" if command.name == "admit" else "Turning a guest away"
        denied = await self._check_power(event, self._policy.admit_power_level, action)
        if denied:
            await self._reply(event, f"Sorry: {denied}.", command, "denied")
            return
        decide = self.guests.admit if command.name == "admit" else self.guests.deny
        try:
            decision = decide(event.room_id, name, event.sender)
        except LobbyError as exc:
            await self._reply(event, exc.message, command, exc.code)
            return
        guest = decision.ticket.name
        if command.name == "admit":
            text = (
                f"{guest} was let in by {event.sender}."
                if decision.changed
                else f"{guest} was already let in."
            )
        else:
            text = (
                f"{guest} was turned away by {event.sender}."
                if decision.changed
                else f"{guest} was already turned away."
            )
        await self._reply(event, text, command, "ok")

    # -- end guests by link -----------------------------------------------------------------------

    async def _unknown(self, event: RoomEvent, command: Command) -> None:
        await self._reply(event, f"Unknown command '{command.raw_name}'.\n{HELP_TEXT}", command, "unknown")

    async def _start(self, event: RoomEvent, command: Command) -> None:
        denied = await self._check_power(event, self._policy.start_power_level, "Starting a call")
        if denied:
            await self._reply(event, f"Sorry: {denied}.", command, "denied")
            return
        now = self._clock.wall_ms()
        try:
            record = await self._conferences.start_conference(event.room_id, event.sender)
        except ConferenceExistsError:
            active = await self._store.get_active_conference(event.room_id)
            since = format_duration(now - active.started_at_ms) if active else "?"
            await self._reply(
                event, f"A call is already running in this room (for {since}).", command, "exists"
            )
            return
        event_id = await self._reply(
            event,
            f"📞 Call started by {event.sender} (conference {record.conference_id}). "
            "Type !visio status to see it, !visio stop to end it.",
            command,
            "ok",
        )
        await self._store.set_conference_state_event(record.conference_id, event_id)

    async def _status(self, event: RoomEvent, command: Command) -> None:
        active = await self._store.get_active_conference(event.room_id)
        if active is None:
            await self._reply(event, "No call in this room. Type !visio start to start one.", command, "ok")
            return
        running = format_duration(self._clock.wall_ms() - active.started_at_ms)
        await self._reply(
            event,
            f"Call running for {running}, started by {active.started_by} (conference {active.conference_id}).",
            command,
            "ok",
        )

    async def _stop(self, event: RoomEvent, command: Command) -> None:
        active = await self._store.get_active_conference(event.room_id)
        if active is None:
            await self._reply(event, "No call is running in this room.", command, "none")
            return
        denied = await self._check_power(event, self._policy.stop_power_level, "Ending a call")
        if denied:
            await self._reply(event, f"Sorry: {denied}.", command, "denied")
            return
        ended = await self._conferences.end_conference(event.room_id, event.sender)
        if ended is None:
            await self._reply(event, "No call is running in this room.", command, "none")
            return
        await self._reply(event, summary_text(ended), command, "ok")
