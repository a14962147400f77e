"""The call's state shown in its room: one status message, edited as people join and leave.

Listens to the hub. The status message is the bot's reply to ``!visio start`` (``RoomBot`` stores its
id with the conference); a conference started another way (an Element Call user opening it) gets a
fresh status message. Joins and leaves mark the room dirty; a worker edits the message (``m.replace``)
at most once per ``debounce`` seconds per room, so ten people joining at once make one or two edits,
not ten messages. When the conference ends, the message is edited to "ended" and, when it ended by
itself (last participant left), a summary is posted; a ``!visio stop`` gets its summary as the reply.

Every edit carries ``io.visio.conference``: the conference id, the focus (the bot's user and device,
for clients of ``docs/protocol.md``) and who is in.

Federation (``calls.federation``): the message lists the participants of each linked ministry as its
bot reports them, and each link's state ("linked", "unreachable since ..."). A link refused by
policy or trust gets its own notice, once per call and reason, naming who cannot be reached and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from visio_matrix.storage import ConferenceRecord
from visio_matrix.tasks import TaskOwner

from .hub_api import (
    ConferenceEnded,
    ConferenceStarted,
    HubEvent,
    Identity,
    LinkState,
    LinkStatusChanged,
    ParticipantConnectedEvent,
    ParticipantJoined,
    ParticipantRemoved,
    ParticipantView,
)
from .room_bot import format_duration, notice, summary_text

log = logging.getLogger(__name__)

JOIN_HINT = (
    "To join: use a visio client (it calls me), Element Call, or type !visio join "
    "and answer my call in our direct chat."
)


class StatusIO(Protocol):
    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str: ...


class StatusStore(Protocol):
    async def get_conference(self, conference_id: str) -> ConferenceRecord | None: ...

    async def set_conference_state_event(self, conference_id: str, event_id: str) -> None: ...


class ParticipantsView(Protocol):
    def participants(self, room_id: str) -> tuple[ParticipantView, ...]: ...


@dataclass(frozen=True)
class LinkView:
    """What the status shows of one federation link."""

    server_name: str
    state: LinkState
    since_ms: int
    detail: str
    remote: tuple[Identity, ...]


def people_text(participants: tuple[ParticipantView, ...] | tuple[Identity, ...]) -> str:
    users: list[str] = []
    for p in participants:
        user_id = p.identity.user_id if isinstance(p, ParticipantView) else p.user_id
        if user_id not in users:
            users.append(user_id)
    return ", ".join(users) if users else "nobody yet"


def _clock_text(ms: int) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ms / 1000))


def link_line(link: LinkView) -> str:
    if link.state == "linked":
        return f"🔗 {link.server_name}: linked ({len({i.user_id for i in link.remote})} in the call there)"
    if link.state == "connecting":
        return f"🔗 {link.server_name}: connecting"
    if link.state == "unreachable":
        return (
            f"⚠️ {link.server_name}: unreachable since {_clock_text(link.since_ms)} ({link.detail}); retrying"
        )
    if link.state == "refused":
        return f"⛔ {link.server_name}: not linked: {link.detail}"
    return f"{link.server_name}: {link.detail or 'not linked'}"


def status_content(
    record: ConferenceRecord,
    participants: tuple[ParticipantView, ...],
    focus: dict[str, str],
    links: tuple[LinkView, ...] = (),
) -> dict[str, Any]:
    local = tuple(p for p in participants if p.link_server is None)
    remote = [(link.server_name, i) for link in links if link.state == "linked" for i in link.remote]
    count = len({p.identity.user_id for p in local} | {i.user_id for _, i in remote})
    lines = [f"📞 Call in progress, started by {record.started_by}."]
    if links:
        lines.append(f"In the call ({count}): here: {people_text(local)}")
        lines += [
            f"  from {link.server_name}: {people_text(link.remote)}"
            for link in links
            if link.state == "linked"
        ]
        lines += [link_line(link) for link in links]
    else:
        lines.append(f"In the call ({count}): {people_text(local)}")
    lines.append(JOIN_HINT)
    content = notice("\n".join(lines))
    content["io.visio.conference"] = {
        "conf_id": record.conference_id,
        "room_id": record.room_id,
        "focus": dict(focus),
        "participants": [
            {"user_id": p.identity.user_id, "device_id": p.identity.device_id, "via": p.transport}
            for p in local
        ]
        + [
            {"user_id": i.user_id, "device_id": i.device_id, "via": "federation", "server": server}
            for server, i in remote
        ],
        "links": [
            {
                "server": link.server_name,
                "state": link.state,
                "since_ms": link.since_ms,
                "detail": link.detail,
            }
            for link in links
        ],
    }
    return content


def refused_text(link: LinkView) -> str:
    return f"⛔ No link with {link.server_name} for this call: {link.detail}."


def ended_content(ended: ConferenceEnded) -> dict[str, Any]:
    duration = format_duration(ended.ended_at_ms - ended.started_at_ms)
    content = notice(
        f"📴 Call ended after {duration}. Participants: {', '.join(ended.participants) or 'none'}."
    )
    content["io.visio.conference"] = {"conf_id": ended.conference_id, "room_id": ended.room_id, "ended": True}
    return content


def edit_of(event_id: str, new_content: dict[str, Any]) -> dict[str, Any]:
    return {
        "msgtype": new_content.get("msgtype", "m.notice"),
        "body": "* " + str(new_content.get("body", "")),
        "m.new_content": new_content,
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }


class RoomStatus:
    def __init__(
        self,
        io: StatusIO,
        store: StatusStore,
        hub: ParticipantsView,
        focus: dict[str, str],
        debounce: float = 1.0,
        fresh_message_after: float = 2.0,
    ) -> None:
        self._io = io
        self._store = store
        self._hub = hub
        self._focus = focus
        self._debounce = debounce
        self._fresh_after = fresh_message_after
        self._dirty: dict[str, str] = {}  # room id -> conference id
        self._links: dict[str, dict[str, LinkView]] = {}  # room id -> server -> last link state
        self._told: set[tuple[str, str, str]] = set()  # (conference, server, detail) refusals posted
        self._wake = asyncio.Event()
        self._tasks = TaskOwner("room-status")

    def start(self) -> None:
        self._tasks.spawn(self._worker(), "edits")

    async def stop(self) -> None:
        await self._tasks.close()

    async def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, (ParticipantJoined, ParticipantRemoved, ParticipantConnectedEvent)):
            self._mark(event.room_id, event.conference_id)
        elif isinstance(event, ConferenceStarted):
            self._tasks.spawn(self._ensure_message(event), f"status-{event.room_id}")
        elif isinstance(event, LinkStatusChanged):
            self._on_link(event)
        elif isinstance(event, ConferenceEnded):
            self._dirty.pop(event.room_id, None)
            self._links.pop(event.room_id, None)
            self._told = {t for t in self._told if t[0] != event.conference_id}
            self._tasks.spawn(self._ended(event), f"ended-{event.room_id}")

    def _on_link(self, event: LinkStatusChanged) -> None:
        view = LinkView(event.server_name, event.state, event.since_ms, event.detail, event.remote)
        self._links.setdefault(event.room_id, {})[event.server_name] = view
        if event.conference_id:
            self._mark(event.room_id, event.conference_id)
        told = (event.conference_id, event.server_name, event.detail)
        if event.state == "refused" and told not in self._told:
            self._told.add(told)
            self._tasks.spawn(self._post(event.room_id, refused_text(view)), f"refused-{event.room_id}")

    async def _post(self, room_id: str, text: str) -> None:
        try:
            await self._io.send(room_id, "m.room.message", notice(text))
        except Exception:
            log.exception("could not post a link notice in %s", room_id)

    def links(self, room_id: str) -> tuple[LinkView, ...]:
        return tuple(self._links.get(room_id, {}).values())

    def _mark(self, room_id: str, conference_id: str) -> None:
        self._dirty[room_id] = conference_id
        self._wake.set()

    async def _ensure_message(self, event: ConferenceStarted) -> None:
        # ``!visio start`` replies with the status message itself; give it a moment to be stored.
        await asyncio.sleep(self._fresh_after)
        record = await self._store.get_conference(event.conference_id)
        if record is None or not record.active:
            return
        if record.state_event_id is None:
            content = status_content(
                record, self._hub.participants(event.room_id), self._focus, self.links(event.room_id)
            )
            event_id = await self._io.send(event.room_id, "m.room.message", content)
            await self._store.set_conference_state_event(record.conference_id, event_id)
        else:
            self._mark(event.room_id, event.conference_id)

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            for room_id, conference_id in dirty.items():
                try:
                    await self._edit(room_id, conference_id)
                except Exception:
                    log.exception("could not update the call status in %s", room_id)
            await asyncio.sleep(self._debounce)

    async def _edit(self, room_id: str, conference_id: str) -> None:
        record = await self._store.get_conference(conference_id)
        if record is None or not record.active or record.state_event_id is None:
            return
        content = status_content(record, self._hub.participants(room_id), self._focus, self.links(room_id))
        await self._io.send(room_id, "m.room.message", edit_of(record.state_event_id, content))

    async def _ended(self, event: ConferenceEnded) -> None:
        try:
            record = await self._store.get_conference(event.conference_id)
            if record is not None and record.state_event_id is not None:
                await self._io.send(
                    event.room_id, "m.room.message", edit_of(record.state_event_id, ended_content(event))
                )
            if not event.ended_by:  # ended by itself: nobody asked, so tell the room
                await self._io.send(event.room_id, "m.room.message", notice(summary_text(event)))
        except Exception:
            log.exception("could not post the end of the call in %s", event.room_id)
