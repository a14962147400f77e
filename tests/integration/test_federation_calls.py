"""Federation (issue 5) end to end: two (or three) real federating Synapses, one service per ministry,
reference clients exchanging real media, each through ITS OWN ministry's bot.

- users of A and B in one call: everyone gets everyone (colour and tone checked) under the right
  Matrix identity; each relay serves only its own ministry's users plus ONE link; the homeservers'
  databases hold no SDP in clear;
- with 1 publisher on A and 1, 3, 6 subscribers on B, the link carries the same two streams;
- a third ministry outside A's allow-list is refused, the room is told, and no media of A's users
  reaches it (not even through B); with every policy allowing onward relaying, A - B - C in a line
  get each other through B;
- ``!visio stop`` on either side ends the call on both, and for good;
- stopping B's service or B's homeserver does not interrupt A's participants; B's return restores
  the cross-ministry call within 10 s.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from federation_fixtures import Federation

from visio_matrix.app import Service
from visio_matrix.client.media import ColorVideoTrack, MediaProbe, Received, ToneAudioTrack
from visio_matrix.client.session import CallHungUp, ConferenceClient
from visio_matrix.devstack.call_check import loopback_pc
from visio_matrix.devstack.synapse import LocalSynapse
from visio_matrix.devstack.user import MatrixUser

pytestmark = [pytest.mark.synapse, pytest.mark.media]

SDP_MARKERS = ("a=fingerprint", "a=ice-ufrag", "a=candidate")


def said(bot: str, *fragments: str) -> Callable[[Any], bool]:
    return lambda m: m.sender == bot and all(f in (m.body or "") for f in fragments)


def describe(fed: Federation, room_id: str) -> str:
    """Each running relay's view of the room's call, for failure messages."""
    lines = []
    for name, service in fed.services.items():
        conference_id = service.hub.conference_of_room(room_id)
        if conference_id is None:
            lines.append(f"{name}: no call")
            continue
        conference = service.relay.conference(conference_id)
        for p in conference.stats().participants:
            streams = [
                (s.publisher_metadata.get("user_id"), s.kind, s.mid)
                for s in conference.streams_for(p.participant_id)
            ]
            lines.append(
                f"{name}: {p.participant_id} {dict(p.metadata)} link={p.link} in={p.packets_in} out={p.packets_out} drops={p.drops} pli_in={p.keyframe_requests_received} pli_fwd={p.keyframe_requests_forwarded} nacks={p.nacks_received}"
                f" gets {streams}"
            )
        lines += [
            f"{name}: track {t.participant_id} {t.kind} owner={t.owner}"
            for t in conference.published_tracks()
        ]
    return "\n".join(lines)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, explain: Callable[[], str] = str
) -> float:
    """Polls ``check`` until true; returns the seconds it took, fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{explain()}")
        await asyncio.sleep(0.1)


class Person:
    """A user of one ministry in the call through that ministry's bot, publishing a colour and a tone
    (or nothing), decoding whatever it receives per remote user."""

    def __init__(self, fed: Federation, ministry: str, matrix: MatrixUser, index: int) -> None:
        self.fed = fed
        self.ministry = ministry
        self.matrix = matrix
        self.user_id = matrix.user_id
        self.index = index
        self.rgb = ((53 * index) % 200 + 40, (97 * index) % 200 + 40, (151 * index) % 200 + 40)
        self.tone = 300.0 + 150.0 * index
        self.call: ConferenceClient | None = None
        self.probe = MediaProbe()
        self.tracks: list[Any] = []
        self.received: dict[tuple[str, str], Received] = {}  # (user, kind) -> latest track's decoding
        self._watched: dict[int, Received] = {}  # id(receiver track) -> its decoding

    async def join(self, room_id: str, publish: bool = True, bot: str | None = None) -> None:
        """Joins the call from the user's own (room) device: one E2EE device per person keeps the
        process light enough for real-time media (every client and both services share one loop)."""
        if publish:
            self.tracks = [ToneAudioTrack(self.tone), ColorVideoTrack(self.rgb)]
        self.call = ConferenceClient(
            self.matrix.client,
            room_id,
            bot or self.fed[self.ministry].bot_user_id,
            peer_connection_factory=loopback_pc,
            join_timeout=30,
        )
        await self.call.join(self.tracks)

    def watch(self) -> None:
        """Decode every remote track the call has now (a user's newest track is the one looked at)."""
        assert self.call is not None
        for t in self.call.remote:
            if t.user_id is None:
                continue
            received = self._watched.get(id(t.track))
            if received is None:
                received = self._watched[id(t.track)] = self.probe.watch(t.track)
            self.received[(t.user_id, t.kind)] = received

    def hears(self, other: Person) -> bool:
        self.watch()
        video = self.received.get((other.user_id, "video"))
        audio = self.received.get((other.user_id, "audio"))
        return (
            video is not None
            and video.frames >= 5
            and video.colour_close_to(other.rgb)
            and audio is not None
            and len(audio.audio) >= 30
            and abs(audio.dominant_frequency() - other.tone) < 40
        )

    def report(self) -> str:
        self.watch()
        assert self.call is not None
        tracks = [(t.user_id, t.kind, t.mid) for t in self.call.remote]
        got = {
            f"{user} {kind}": (
                r.frames,
                r.last_rgb and tuple(int(c) for c in r.last_rgb),
                round(r.dominant_frequency()),
            )
            for (user, kind), r in self.received.items()
        }
        return f"{self.user_id} (sends {self.rgb}, {self.tone} Hz) has tracks {tracks}, decoded {got}"

    def video_frames(self, other: Person) -> int:
        self.watch()
        video = self.received.get((other.user_id, "video"))
        return video.frames if video is not None else 0

    async def close(self) -> None:
        if self.call is not None:
            await self.call.leave()
        await self.probe.close()
        for track in self.tracks:
            track.stop()


async def people(fed: Federation, spec: list[tuple[str, str]]) -> list[Person]:
    users = [await fed.new_user(ministry, prefix) for ministry, prefix in spec]
    return [
        Person(fed, ministry, u, i + 1) for i, ((ministry, _), u) in enumerate(zip(spec, users, strict=True))
    ]


async def everyone_hears_everyone(fed: Federation, room_id: str, everyone: list[Person]) -> None:
    """Each person decodes each other's colour and tone (30 s each at most)."""
    for p in everyone:
        for other in everyone:
            if other is not p:
                await eventually(
                    lambda p=p, other=other: p.hears(other),
                    30,
                    f"{p.user_id} hearing and seeing {other.user_id}",
                    lambda p=p, other=other: (
                        describe(fed, room_id) + "\n" + p.report() + "\n" + other.report()
                    ),
                )


async def start_linked_call(fed: Federation, starter: Person, room_id: str, servers: list[str]) -> None:
    """``starter`` runs ``!visio start``; returns once its ministry is linked with each of ``servers``."""
    a = fed.service(starter.ministry)
    await starter.matrix.send_text(room_id, "!visio start")
    await starter.matrix.wait_for_message(room_id, said(a.bot_user_id, "📞 Call started"), timeout=30)
    for server in servers:
        await eventually(
            lambda server=server: a.federation.link_states(room_id).get(server, ("",))[0] == "linked",
            30,
            f"the link of {starter.ministry} with {server}",
        )


def relay_view(service: Service, room_id: str) -> tuple[list[str], int]:
    """(user ids of the relay's participant connections that are not links, number of link connections)."""
    conference_id = service.hub.conference_of_room(room_id)
    assert conference_id is not None
    stats = service.relay.conference(conference_id).stats()
    users = [p.metadata.get("user_id", "") for p in stats.participants if not p.link]
    return users, sum(1 for p in stats.participants if p.link)


def link_streams(service: Service, room_id: str, server: str) -> tuple[list[tuple[str, str]], int]:
    """(owner user and kind of each stream the relay sends over its link to ``server``, tracks it receives)."""
    pid = service.federation.link_participant(room_id, server)
    conference_id = service.hub.conference_of_room(room_id)
    assert pid is not None and conference_id is not None
    conference = service.relay.conference(conference_id)
    sent = sorted((s.publisher_metadata.get("user_id", ""), s.kind) for s in conference.streams_for(pid))
    received = sum(1 for t in conference.published_tracks() if t.participant_id == pid)
    return sent, received


def rows_containing(hs: LocalSynapse, needle: str) -> list[str]:
    """Tables (and counts) of the homeserver's whole database whose text holds ``needle``."""
    found = []
    with sqlite3.connect(f"file:{hs.database_path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info('{table}')")]
            for column in columns:
                (n,) = db.execute(
                    f"SELECT COUNT(*) FROM '{table}' WHERE instr(CAST(\"{column}\" AS TEXT), ?) > 0",
                    (needle,),
                ).fetchone()
                if n:
                    found.append(f"{table}.{column}: {n}")
    return found


async def test_two_ministries_one_call_each_relay_serves_its_own(
    ministries: Federation, tmp_path: Path
) -> None:
    fed = ministries
    a_server, b_server = fed["A"].server_name, fed["B"].server_name
    a1, a2, b1, b2 = await people(fed, [("A", "alice"), ("A", "arnaud"), ("B", "bea"), ("B", "bruno")])
    everyone = [a1, a2, b1, b2]
    try:
        room_id = await fed.shared_room(a1.matrix, [a2.matrix, b1.matrix, b2.matrix])
        await start_linked_call(fed, a1, room_id, [b_server])
        await eventually(lambda: fed.service("B").hub.conference_of_room(room_id) is not None, 20, "B's call")
        await asyncio.gather(*(p.join(room_id) for p in everyone))

        await everyone_hears_everyone(fed, room_id, everyone)

        # Who serves whom: each relay has its own ministry's users and exactly one link.
        for name, server, own in (("A", a_server, [a1, a2]), ("B", b_server, [b1, b2])):
            users, links = relay_view(fed.service(name), room_id)
            assert sorted(users) == sorted(p.user_id for p in own), f"relay {name} serves {users}"
            assert links == 1
            assert all(u.endswith(":" + server) for u in users)
        # The link carries each publisher's two streams once, each named after its owner.
        sent, received = link_streams(fed.service("A"), room_id, b_server)
        assert sent == sorted((p.user_id, k) for p in (a1, a2) for k in ("audio", "video"))
        assert received == 4

        # A user of B calling A's bot is refused and told to use its own ministry's bot.
        stray = Person(fed, "B", await fed.login("B", b1.user_id), 9)
        with pytest.raises(CallHungUp):
            await stray.join(room_id, publish=False, bot=fed["A"].bot_user_id)
        assert stray.call is not None and stray.call.hangup_reason == "server_not_allowed"
        assert "own ministry" in (stray.call.hangup_message or "")
        await stray.close()

        # The room shows the same call on both sides: A's status lists B's people, and B's lists A's.
        await a1.matrix.wait_for_message(
            room_id, said(fed["A"].bot_user_id, f"from {b_server}", b1.user_id, b2.user_id), timeout=20
        )
        await b1.matrix.wait_for_message(
            room_id, said(fed["B"].bot_user_id, f"from {a_server}", a1.user_id, a2.user_id), timeout=20
        )

        # Neither homeserver stored the link's (or anyone's) SDP in clear.
        for name in ("A", "B"):
            for marker in SDP_MARKERS:
                assert rows_containing(fed[name].hs, marker) == [], (
                    f"{marker} in clear on {name}'s homeserver"
                )
        assert rows_containing(fed["A"].hs, b1.user_id)  # the search does find what is stored in clear
    finally:
        await asyncio.gather(*(p.close() for p in everyone), return_exceptions=True)


async def test_the_link_carries_a_publisher_once_whatever_the_far_audience(ministries: Federation) -> None:
    fed = ministries
    b_server = fed["B"].server_name
    (publisher,) = await people(fed, [("A", "pub")])
    subscribers = await people(fed, [("B", f"sub{i}") for i in range(6)])
    try:
        room_id = await fed.shared_room(publisher.matrix, [s.matrix for s in subscribers])
        await start_linked_call(fed, publisher, room_id, [b_server])
        await publisher.join(room_id)
        expected = [(publisher.user_id, "audio"), (publisher.user_id, "video")]
        joined = 0
        for count in (1, 3, 6):
            batch = subscribers[joined:count]
            await asyncio.gather(*(s.join(room_id, publish=False) for s in batch))
            joined = count
            for s in subscribers[:count]:
                await eventually(lambda s=s: s.hears(publisher), 30, f"{s.user_id} getting the publisher")
            sent, _ = link_streams(fed.service("A"), room_id, b_server)
            assert sent == expected, f"with {count} subscribers on B the link carries {sent}"
            b = fed.service("B")
            pid = b.federation.link_participant(room_id, fed["A"].server_name)
            from_link = [
                t
                for t in b.relay.conference(b.hub.conference_of_room(room_id) or "").published_tracks()
                if t.participant_id == pid
            ]
            assert sorted(((t.owner or {}).get("user_id"), t.kind) for t in from_link) == expected
    finally:
        await asyncio.gather(*(p.close() for p in [publisher, *subscribers]), return_exceptions=True)


async def start_three(fed: Federation, a1: Person, b1: Person, c1: Person, creator: Person) -> str:
    """A room of the three made by ``creator``, a call started by ``a1``; returns once A is linked
    with B and B with C."""
    room_id = await fed.shared_room(creator.matrix, [p.matrix for p in (a1, b1, c1) if p is not creator])
    await start_linked_call(fed, a1, room_id, [fed["B"].server_name])
    c_server = fed["C"].server_name
    await eventually(
        lambda: fed.service("B").federation.link_states(room_id).get(c_server, ("",))[0] == "linked",
        30,
        "the link of B with C",
    )
    return room_id


async def test_a_ministry_outside_the_allow_list_is_refused_and_gets_none_of_its_media(
    three_ministries: Federation,
) -> None:
    """A links with B only; B links with A and C (not onward). C's users get B's media, never A's,
    and the room is told why A and C are not linked."""
    fed = three_ministries
    a_server, c_server = fed["A"].server_name, fed["C"].server_name
    a1, b1, c1 = await people(fed, [("A", "alice"), ("B", "bea"), ("C", "chloe")])
    try:
        room_id = await start_three(fed, a1, b1, c1, creator=a1)
        # C asks A for a link too; A refuses, and both bots say so in the room.
        await a1.matrix.wait_for_message(
            room_id, said(fed["A"].bot_user_id, f"No link with {c_server}", "link_servers"), timeout=30
        )
        await a1.matrix.wait_for_message(
            room_id, said(fed["C"].bot_user_id, f"No link with {a_server}"), timeout=30
        )
        assert fed.service("A").federation.link_participant(room_id, c_server) is None

        await asyncio.gather(*(p.join(room_id) for p in (a1, b1, c1)))
        for p, other in ((a1, b1), (b1, a1), (b1, c1), (c1, b1)):
            await eventually(
                lambda p=p, other=other: p.hears(other), 30, f"{p.user_id} getting {other.user_id}"
            )
        await asyncio.sleep(2)  # time for anything that should not flow to show up
        a1.watch()
        c1.watch()
        assert not any(user == c1.user_id for user, _ in a1.received), "C's media reached A"
        assert not any(user == a1.user_id for user, _ in c1.received), "A's media reached C"
        c = fed.service("C")
        owners = {
            (t.owner or {}).get("user_id")
            for t in c.relay.conference(c.hub.conference_of_room(room_id) or "").published_tracks()
        }
        assert a1.user_id not in owners and b1.user_id in owners
        sent_to_c, _ = link_streams(fed.service("B"), room_id, c_server)
        assert {user for user, _ in sent_to_c} == {b1.user_id}  # B relays its own users only
        _, links = relay_view(fed.service("A"), room_id)
        assert links == 1
    finally:
        await asyncio.gather(*(p.close() for p in (a1, b1, c1)), return_exceptions=True)


async def test_the_middle_ministry_relays_onward_when_every_policy_allows_it(
    three_ministries_onward: Federation,
) -> None:
    """A - B - C, all with ``relay_onwards``: A's user and C's get each other through B, under their
    own identities. A starts, so A invites B and B invites C: C's permission reaches B only in C's
    answer (before the fix, B never relayed C's users onward)."""
    fed = three_ministries_onward
    a_server, c_server = fed["A"].server_name, fed["C"].server_name
    a1, b1, c1 = await people(fed, [("A", "alice"), ("B", "bea"), ("C", "chloe")])
    try:
        # Made by B's user: a bot accepts invites only from its own users and linked ministries'.
        room_id = await start_three(fed, a1, b1, c1, creator=b1)
        b = fed.service("B")
        assert fed.service("A").federation.link_participant(room_id, c_server) is None
        await asyncio.gather(*(p.join(room_id) for p in (a1, b1, c1)))
        await everyone_hears_everyone(fed, room_id, [a1, b1, c1])
        # Through B only: A's relay has one link (to B), and B sends C's user to A over it.
        _, links = relay_view(fed.service("A"), room_id)
        assert links == 1
        sent_to_a, _ = link_streams(b, room_id, a_server)
        assert {user for user, _ in sent_to_a} == {b1.user_id, c1.user_id}
        sent_to_c, _ = link_streams(b, room_id, c_server)
        assert {user for user, _ in sent_to_c} == {a1.user_id, b1.user_id}
    finally:
        await asyncio.gather(*(p.close() for p in (a1, b1, c1)), return_exceptions=True)


async def frames_grow(p: Person, other: Person, seconds: float = 1.5, at_least: int = 3) -> bool:
    """Whether ``p`` decodes at least ``at_least`` new video frames of ``other`` in ``seconds``."""
    before = p.video_frames(other)
    await asyncio.sleep(seconds)
    return p.video_frames(other) >= before + at_least


async def test_visio_stop_on_either_side_ends_the_call_on_both_for_good(ministries: Federation) -> None:
    """``!visio stop`` on one side: the far relay sees the link close before the far bot gets the
    hangup over Matrix; the far call still ends, and neither side starts it again (before the fix, the
    far side invited again at once and the stopped side made a new call for that invite)."""
    fed = ministries
    a, b = fed.service("A"), fed.service("B")
    a1, b1 = await people(fed, [("A", "alice"), ("B", "bea")])

    def ended_notices(service: Service) -> int:
        return sum(1 for m in a1.matrix.messages(room_id) if said(service.bot_user_id, "📴 Call ended")(m))

    async def both_end(stopper: Person) -> None:
        before = {service: ended_notices(service) for service in (a, b)}
        await stopper.matrix.send_text(room_id, "!visio stop")
        for service in (a, b):  # each bot posts a new "Call ended" (the first round's do not count)
            await eventually(
                lambda service=service: ended_notices(service) > before[service],
                20,
                f"{service.bot_user_id} saying the call ended",
            )
        await eventually(lambda: not a.hub.conference_of_room(room_id), 10, "A's call ended")
        await eventually(lambda: not b.hub.conference_of_room(room_id), 10, "B's call ended")
        await asyncio.sleep(4)  # longer than the first link retry (1 s) plus a link invite's trip
        assert a.hub.conference_of_room(room_id) is None and b.hub.conference_of_room(room_id) is None

    try:
        room_id = await fed.shared_room(a1.matrix, [b1.matrix])
        await a1.matrix.set_power_level(room_id, b1.user_id, 50)  # policy.stop_power_level
        # A starts with both in the call; B's user stops it (B's relay answered the link).
        await start_linked_call(fed, a1, room_id, [fed["B"].server_name])
        await asyncio.gather(*(p.join(room_id) for p in (a1, b1)))
        await eventually(lambda: a1.hears(b1) and b1.hears(a1), 30, "A and B hearing each other")
        await both_end(b1)
        # B starts (its relay offers the link), A's user stops it.
        await start_linked_call(fed, b1, room_id, [fed["A"].server_name])
        await eventually(lambda: a.hub.conference_of_room(room_id) is not None, 20, "A's side of the call")
        await both_end(a1)
    finally:
        await asyncio.gather(*(p.close() for p in (a1, b1)), return_exceptions=True)


async def test_the_other_ministry_going_away_interrupts_nobody_and_the_link_comes_back(
    ministries: Federation,
) -> None:
    fed = ministries
    b_server = fed["B"].server_name
    a1, a2, b1 = await people(fed, [("A", "alice"), ("A", "arnaud"), ("B", "bea")])
    everyone = [a1, a2, b1]
    try:
        room_id = await fed.shared_room(a1.matrix, [a2.matrix, b1.matrix])
        await start_linked_call(fed, a1, room_id, [b_server])
        await asyncio.gather(*(p.join(room_id) for p in everyone))
        await everyone_hears_everyone(fed, room_id, everyone)
        a = fed.service("A")

        # B's service stops: A's two people go on talking; A's room status says B is unreachable.
        await fed.stop_service("B")
        assert await frames_grow(a1, a2) and await frames_grow(a2, a1)
        await eventually(
            lambda: a.federation.link_states(room_id)[b_server][0] == "unreachable",
            10,
            "A seeing B unreachable",
        )
        await a1.matrix.wait_for_message(
            room_id, said(a.bot_user_id, f"{b_server}: unreachable since"), timeout=20
        )
        assert await frames_grow(a1, a2)

        # B comes back: the cross-ministry call is back within 10 s, with no user action.
        await fed.start_service("B")
        ready = time.monotonic()
        await eventually(
            lambda: a.federation.link_states(room_id)[b_server][0] == "linked", 10, "the link back"
        )

        async def both_ways() -> bool:
            return await frames_grow(a1, b1, 1.0, 3) and await frames_grow(b1, a1, 1.0, 3)

        await eventually(both_ways, 10, "media between A and B again")
        restored = time.monotonic() - ready
        print(f"cross-ministry media back {restored:.2f}s after B's service was ready")
        assert restored <= 10
        await a1.matrix.wait_for_message(room_id, said(a.bot_user_id, f"{b_server}: linked"), timeout=20)

        # B's homeserver goes away: media does not go through homeservers, so nothing stops.
        await fed.stop_homeserver("B")
        assert await frames_grow(a1, a2) and await frames_grow(a1, b1) and await frames_grow(b1, a1)
        await fed.start_homeserver("B")
        assert await frames_grow(a1, b1)
    finally:
        await asyncio.gather(*(p.close() for p in everyone), return_exceptions=True)
