"""The call status shown in the room (calls/room_status.py), federation links included."""

from __future__ import annotations

import asyncio
from typing import Any

from visio_matrix.calls.hub_api import Identity, LinkStatusChanged, ParticipantView
from visio_matrix.calls.room_status import LinkView, RoomStatus, status_content
from visio_matrix.storage import ConferenceRecord

ROOM = "!r:a.gouv.fr"
RECORD = ConferenceRecord("conf1", ROOM, "@alice:a.gouv.fr", 0, None, None, "$status")
FOCUS = {"user_id": "@visio:a.gouv.fr", "device_id": "BOT"}


def view(user: str, link_server: str | None = None) -> ParticipantView:
    return ParticipantView("PA_" + user, "conf1", ROOM, Identity(user, "D"), "todevice", 0, True, link_server)


def test_status_lists_each_ministry_and_each_link() -> None:
    participants = (view("@alice:a.gouv.fr"), view("@visio:b.gouv.fr", link_server="b.gouv.fr"))
    links = (
        LinkView("b.gouv.fr", "linked", 0, "", (Identity("@bea:b.gouv.fr", "B1"),)),
        LinkView("c.gouv.fr", "unreachable", 1_800_000_000_000, "link lost (media_failed)", ()),
    )
    content = status_content(RECORD, participants, FOCUS, links)
    body = content["body"]
    assert "In the call (2): here: @alice:a.gouv.fr" in body
    assert "from b.gouv.fr: @bea:b.gouv.fr" in body
    assert "🔗 b.gouv.fr: linked (1 in the call there)" in body
    assert "c.gouv.fr: unreachable since" in body and "link lost" in body
    assert "@visio:b.gouv.fr" not in body  # the link itself is not a person
    conference = content["io.visio.conference"]
    assert [p["user_id"] for p in conference["participants"]] == ["@alice:a.gouv.fr", "@bea:b.gouv.fr"]
    assert conference["participants"][1]["server"] == "b.gouv.fr"
    assert [(x["server"], x["state"]) for x in conference["links"]] == [
        ("b.gouv.fr", "linked"),
        ("c.gouv.fr", "unreachable"),
    ]


def test_without_links_the_status_is_unchanged() -> None:
    body = status_content(RECORD, (view("@alice:a.gouv.fr"),), FOCUS)["body"]
    assert "In the call (1): @alice:a.gouv.fr" in body and "🔗" not in body


class Io:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str:
        self.sent.append(content)
        return f"$e{len(self.sent)}"


class Store:
    async def get_conference(self, conference_id: str) -> ConferenceRecord | None:
        return RECORD

    async def set_conference_state_event(self, conference_id: str, event_id: str) -> None:
        pass


class Hub:
    def participants(self, room_id: str) -> tuple[ParticipantView, ...]:
        return (view("@alice:a.gouv.fr"),)


async def test_a_refused_link_gets_one_notice_and_shows_in_the_status() -> None:
    io = Io()
    status = RoomStatus(io, Store(), Hub(), FOCUS, debounce=0.01)
    status.start()
    try:
        refused = LinkStatusChanged(
            ROOM, "conf1", "c.gouv.fr", "refused", 0, "c.gouv.fr is not in link_servers"
        )
        await status.on_hub_event(refused)
        await status.on_hub_event(refused)  # the same refusal again: no second notice
        await asyncio.sleep(0.1)
        notices = [c["body"] for c in io.sent if "m.new_content" not in c]
        assert notices == ["⛔ No link with c.gouv.fr for this call: c.gouv.fr is not in link_servers."]
        edits = [c["m.new_content"]["body"] for c in io.sent if "m.new_content" in c]
        assert edits and "⛔ c.gouv.fr: not linked: c.gouv.fr is not in link_servers" in edits[-1]
    finally:
        await status.stop()
