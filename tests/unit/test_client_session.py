"""ConferenceClient's signaling against a scripted bot: a fake to-device channel, real aiortc SDP.

The bot side is a real RTCPeerConnection (so offers/answers are real SDP that aiortc must accept) driven
by the test through the conference wire format of ``signaling.conference``; no media flows here
(see test_reference_client.py for the real service).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.sdp import SessionDescription
from nio import AsyncClient

from visio_matrix.client import CallHungUp, ConferenceClient, ConferenceError, JoinTimeout
from visio_matrix.crypto.todevice import SecureToDevice
from visio_matrix.relay import restrict_ice
from visio_matrix.signaling.conference import (
    ConferenceMessage,
    GroupFields,
    VisioReason,
    build_conference_answer,
    build_conference_hangup,
    build_conference_invite,
    build_conference_negotiate,
    parse_conference_message,
)
from visio_matrix.signaling.messages import (
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallNegotiate,
    EndOfCandidates,
    StreamMetadata,
)

ROOM = "!room:example.org"
BOT, BOT_DEVICE = "@visio:example.org", "BOTDEVICE"
ME, MY_DEVICE = "@alice:example.org", "ALICEDEVICE"
BOB = "@bob:example.org"


class FakeChannel:
    """Records what the client sends; delivers what the test (the bot) sends, as verified Olm messages."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, dict[str, Any]]] = []
        self.handlers: list[Callable[[SecureToDevice], Awaitable[None]]] = []
        self.installed = False
        self._changed = asyncio.Condition()

    def install(self) -> None:
        self.installed = True

    def add_handler(self, handler: Callable[[SecureToDevice], Awaitable[None]]) -> None:
        self.handlers.append(handler)

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None:
        async with self._changed:
            self.sent.append((user_id, device_id, event_type, content))
            self._changed.notify_all()

    async def refresh_sender(self, message: SecureToDevice) -> SecureToDevice:
        return message

    async def deliver(
        self, event_type: str, content: dict[str, Any], sender: str = BOT, device: str | None = BOT_DEVICE
    ) -> None:
        message = SecureToDevice(event_type, content, sender, "curve-key", device)
        for handler in self.handlers:
            await handler(message)

    async def next_sent(self, event_type: str, after: int = 0, timeout: float = 10) -> ConferenceMessage:
        """The first message of that type sent at index >= after, parsed (it must be valid)."""

        def find() -> tuple[str, str, str, dict[str, Any]] | None:
            return next((s for s in self.sent[after:] if s[2] == event_type), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
        user_id, device_id, _, content = find()  # type: ignore[misc]
        assert (user_id, device_id) == (BOT, BOT_DEVICE)
        parsed = parse_conference_message(event_type, content)
        assert isinstance(parsed, ConferenceMessage), parsed
        return parsed

    def count(self, event_type: str) -> int:
        return sum(1 for s in self.sent if s[2] == event_type)


def new_pc() -> RTCPeerConnection:
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    return restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])


class Bot:
    """The test's side of the protocol: a real peer connection plus the bot's group fields."""

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel
        self.pc = new_pc()
        self.session = "botsession1"
        self.seq = 0
        self.party = "botparty"
        self.client_session = ""
        self.pcs = [self.pc]

    def group(self) -> GroupFields:
        self.seq += 1
        return GroupFields("conf1", BOT_DEVICE, self.session, self.client_session, self.seq - 1)

    async def answer(
        self, invite: ConferenceMessage, metadata: dict[str, StreamMetadata] | None = None
    ) -> None:
        assert isinstance(invite.message, CallInvite)
        self.client_session = invite.group.sender_session_id
        await self.pc.setRemoteDescription(RTCSessionDescription(invite.message.offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        content = build_conference_answer(
            invite.call_id,
            self.party,
            self.group(),
            self.pc.localDescription.sdp,
            stream_metadata=metadata or {},
        )
        await self.channel.deliver("m.call.answer", content)

    async def offer_track(self, call_id: str, track: MediaStreamTrack, stream_id: str, user: str) -> None:
        """Add a track of `user` and send the new offer as m.call.negotiate (what the relay does)."""
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        transceiver.sender._stream_id = stream_id
        await self.pc.setLocalDescription(await self.pc.createOffer())
        metadata = {stream_id: StreamMetadata("m.usermedia", user_id=user, device_id=user.upper()[1:4])}
        content = build_conference_negotiate(
            call_id,
            self.party,
            self.group(),
            "offer",
            self.pc.localDescription.sdp,
            lifetime_ms=10_000,
            stream_metadata=metadata,
        )
        await self.channel.deliver("m.call.negotiate", content)

    async def hangup(self, call_id: str, reason: VisioReason) -> None:
        content = build_conference_hangup(call_id, self.party, self.group(), reason)
        await self.channel.deliver("m.call.hangup", content)

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()


@pytest.fixture
async def channel() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
async def bot(channel: FakeChannel) -> AsyncIterator[Bot]:
    b = Bot(channel)
    yield b
    await b.close()


def make_client(channel: FakeChannel, **kwargs: Any) -> ConferenceClient:
    nio_client = cast(AsyncClient, SimpleNamespace(user_id=ME, device_id=MY_DEVICE))
    return ConferenceClient(
        nio_client,
        ROOM,
        BOT,
        bot_device_id=BOT_DEVICE,
        channel=channel,
        peer_connection_factory=lambda config: restrict_ice(RTCPeerConnection(config), ["127.0.0.1"]),
        **kwargs,
    )


@pytest.fixture
async def client(channel: FakeChannel) -> AsyncIterator[ConferenceClient]:
    c = make_client(channel)
    yield c
    await c.leave()


async def joined(
    client: ConferenceClient, channel: FakeChannel, bot: Bot, tracks: list[MediaStreamTrack]
) -> str:
    join = asyncio.create_task(client.join(tracks))
    invite = await channel.next_sent("m.call.invite")
    await bot.answer(invite)
    await asyncio.wait_for(join, 10)
    return invite.call_id


# ---- joining --------------------------------------------------------------------------------------


async def test_invite_carries_our_tracks_group_fields_and_metadata(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    audio, video = AudioStreamTrack(), VideoStreamTrack()
    join = asyncio.create_task(client.join([audio, video], purpose="m.usermedia"))
    invite = await channel.next_sent("m.call.invite")
    assert channel.installed
    message = invite.message
    assert isinstance(message, CallInvite)
    assert invite.room_id == ROOM
    assert invite.group.conf_id == "" and invite.group.dest_session_id == ""
    assert invite.group.device_id == MY_DEVICE and invite.group.seq == 0
    assert message.lifetime_ms == 15_000
    # Our two tracks, sendonly, in ONE msid stream, which the metadata describes.
    media = SessionDescription.parse(message.offer_sdp).media
    assert [(m.kind, m.direction) for m in media] == [("audio", "sendonly"), ("video", "sendonly")]
    streams = {m.msid.split()[0] for m in media if m.msid}
    assert len(streams) == 1
    assert message.stream_metadata is not None
    assert dict(message.stream_metadata) == {streams.pop(): StreamMetadata("m.usermedia")}
    assert "a=group:BUNDLE 0 1" in message.offer_sdp
    assert client.state == "joining"
    await bot.answer(invite)
    await asyncio.wait_for(join, 10)


async def test_answer_is_applied_then_end_of_candidates(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    call_id = await joined(client, channel, bot, [AudioStreamTrack()])
    assert client.state == "joined"
    assert client.call_id == call_id
    pc = client.peer_connection
    assert pc is not None and pc.signalingState == "stable"
    assert pc.remoteDescription.sdp == bot.pc.localDescription.sdp
    candidates = await channel.next_sent("m.call.candidates")
    assert isinstance(candidates.message, CallCandidates)
    assert candidates.message.candidates == (EndOfCandidates(),)
    # Once the bot spoke, our messages name its session and conference, with increasing seq.
    assert candidates.group.dest_session_id == bot.session
    assert candidates.group.conf_id == "conf1"
    assert candidates.group.seq == 1


async def test_receive_only_join_offers_recvonly_audio_and_video(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    join = asyncio.create_task(client.join())
    invite = await channel.next_sent("m.call.invite")
    assert isinstance(invite.message, CallInvite)
    media = SessionDescription.parse(invite.message.offer_sdp).media
    assert [(m.kind, m.direction) for m in media] == [("audio", "recvonly"), ("video", "recvonly")]
    assert invite.message.stream_metadata is None
    await bot.answer(invite)
    await asyncio.wait_for(join, 10)


async def test_join_times_out_with_a_clear_error_and_hangs_up(channel: FakeChannel) -> None:
    client = make_client(channel, join_timeout=0.5)
    with pytest.raises(JoinTimeout, match=r"did not answer the call invite within 0\.5s"):
        await client.join([AudioStreamTrack()])
    assert client.state == "failed"
    hangup = await channel.next_sent("m.call.hangup")
    assert isinstance(hangup.message, CallHangup) and hangup.message.reason == "invite_timeout"
    assert client.peer_connection is None
    await client.leave()
    assert channel.count("m.call.hangup") == 1  # leave() does not hang up twice


async def test_refused_join_raises_with_the_bots_reason(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    join = asyncio.create_task(client.join([AudioStreamTrack()]))
    invite = await channel.next_sent("m.call.invite")
    bot.client_session = invite.group.sender_session_id
    await bot.hangup(invite.call_id, VisioReason.NOT_A_MEMBER)
    with pytest.raises(CallHungUp, match="not_a_member") as info:
        await asyncio.wait_for(join, 10)
    assert info.value.reason == "not_a_member"
    assert info.value.message == "You are not a member of this room."
    assert client.hangup_reason == "not_a_member"
    assert client.state == "failed"


async def test_join_twice_is_refused(client: ConferenceClient, channel: FakeChannel, bot: Bot) -> None:
    await joined(client, channel, bot, [AudioStreamTrack()])
    with pytest.raises(ConferenceError, match="needs an idle client"):
        await client.join()


# ---- during the call -------------------------------------------------------------------------------


async def test_negotiate_offer_is_answered_and_remote_track_named(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    call_id = await joined(client, channel, bot, [AudioStreamTrack(), VideoStreamTrack()])
    before = len(channel.sent)
    await bot.offer_track(call_id, VideoStreamTrack(), "bobstream", BOB)
    reply = await channel.next_sent("m.call.negotiate", after=before)
    assert isinstance(reply.message, CallNegotiate)
    assert reply.message.description_type == "answer"
    assert reply.call_id == call_id
    await bot.pc.setRemoteDescription(RTCSessionDescription(reply.message.sdp, "answer"))
    assert bot.pc.signalingState == "stable"
    track = await client.wait_for_track(BOB, "video", timeout=5)
    assert (track.user_id, track.device_id, track.stream_id, track.purpose, track.kind) == (
        BOB,
        "BOB",
        "bobstream",
        "m.usermedia",
        "video",
    )
    assert track.track.kind == "video"
    assert len(client.remote) == 1
    with pytest.raises(TimeoutError, match=r"no audio track from @bob:example\.org"):
        await client.wait_for_track(BOB, "audio", timeout=0.2)


async def test_bot_hangup_records_reason_and_ends_waits(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    call_id = await joined(client, channel, bot, [AudioStreamTrack()])
    waiter = asyncio.create_task(client.wait_for_track(BOB, "video", timeout=10))
    await asyncio.sleep(0)
    await bot.hangup(call_id, VisioReason.CONFERENCE_ENDED)
    with pytest.raises(CallHungUp, match="conference_ended"):
        await asyncio.wait_for(waiter, 5)
    assert client.hangup_reason == "conference_ended"
    assert client.hangup_message == "The conference has ended."
    assert client.state == "left"
    assert client.peer_connection is None
    await client.leave()
    assert channel.count("m.call.hangup") == 0  # nothing to hang up: the bot did


async def test_leave_hangs_up_user_hangup(client: ConferenceClient, channel: FakeChannel, bot: Bot) -> None:
    call_id = await joined(client, channel, bot, [AudioStreamTrack()])
    await client.leave()
    hangup = await channel.next_sent("m.call.hangup")
    assert isinstance(hangup.message, CallHangup)
    assert (hangup.call_id, hangup.message.reason) == (call_id, "user_hangup")
    assert client.state == "left" and client.peer_connection is None
    await client.leave()
    assert channel.count("m.call.hangup") == 1


async def test_messages_not_from_our_bot_device_or_call_are_ignored(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    call_id = await joined(client, channel, bot, [AudioStreamTrack()])
    group = GroupFields("conf1", BOT_DEVICE, bot.session, bot.client_session, 50)
    hangup = build_conference_hangup(call_id, "x", group, VisioReason.CONFERENCE_ENDED)
    await channel.deliver("m.call.hangup", hangup, sender="@mallory:example.org")  # another user
    await channel.deliver("m.call.hangup", hangup, device="OTHERDEVICE")  # another device of the bot
    await channel.deliver("m.call.hangup", hangup, device=None)  # a device we cannot verify
    other_call = build_conference_hangup("othercall", "x", group, VisioReason.CONFERENCE_ENDED)
    await channel.deliver("m.call.hangup", other_call)
    other_session = build_conference_hangup(
        call_id,
        "x",
        GroupFields("conf1", BOT_DEVICE, bot.session, "notmysession", 51),
        VisioReason.CONFERENCE_ENDED,
    )
    await channel.deliver("m.call.hangup", other_session)
    replayed = build_conference_hangup(
        call_id,
        "x",
        GroupFields("conf1", BOT_DEVICE, bot.session, bot.client_session, 0),
        VisioReason.CONFERENCE_ENDED,
    )
    await channel.deliver("m.call.hangup", replayed)  # seq 0 was the answer: a replay
    await channel.deliver("m.call.hangup", {"call_id": call_id, "version": 1})  # invalid content
    foreign_invite = build_conference_invite(
        "newcall", "x", group, ROOM, bot.pc.localDescription.sdp, 10_000, replaces="notourcall"
    )
    await channel.deliver("m.call.invite", foreign_invite)
    for _ in range(50):
        if client.ignored == 8:
            break
        await asyncio.sleep(0.02)
    assert client.ignored == 8
    assert client.state == "joined" and client.hangup_reason is None
    assert client.call_id == call_id
    # ... while the real bot device is still heard.
    await bot.hangup(call_id, VisioReason.CONFERENCE_ENDED)
    for _ in range(50):
        if client.hangup_reason:
            break
        await asyncio.sleep(0.02)
    assert client.hangup_reason == "conference_ended"


async def test_reinvite_after_restart_builds_a_new_connection_with_our_tracks(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    audio, video = AudioStreamTrack(), VideoStreamTrack()
    old_call = await joined(client, channel, bot, [audio, video])
    old_pc = client.peer_connection
    old_stream = SessionDescription.parse(old_pc.localDescription.sdp).media[0].msid.split()[0]  # type: ignore[union-attr]
    # The restarted bot: a new connection offering recvonly audio+video, plus Bob's video.
    bot.pc = new_pc()
    bot.pcs.append(bot.pc)
    bot.session, bot.seq = "botsession2", 0
    bot.pc.addTransceiver("audio", direction="recvonly")
    bot.pc.addTransceiver("video", direction="recvonly")
    bob_video = bot.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    bob_video.sender._stream_id = "bobstream"
    await bot.pc.setLocalDescription(await bot.pc.createOffer())
    before = len(channel.sent)
    invite = build_conference_invite(
        "newcall",
        bot.party,
        bot.group(),
        ROOM,
        bot.pc.localDescription.sdp,
        30_000,
        stream_metadata={"bobstream": StreamMetadata("m.usermedia", user_id=BOB, device_id="BOBDEV")},
        replaces=old_call,
    )
    await channel.deliver("m.call.invite", invite)
    answer = await channel.next_sent("m.call.answer", after=before)
    assert isinstance(answer.message, CallAnswer)
    assert answer.call_id == "newcall"
    assert answer.group.seq == 0 and answer.group.dest_session_id == "botsession2"
    await bot.pc.setRemoteDescription(RTCSessionDescription(answer.message.answer_sdp, "answer"))
    media = SessionDescription.parse(answer.message.answer_sdp).media
    # Our tracks went on the m-lines where the bot wants to receive, in our same stream; Bob's we receive.
    assert [(m.kind, m.direction) for m in media] == [
        ("audio", "sendonly"),
        ("video", "sendonly"),
        ("video", "recvonly"),
    ]
    assert {m.msid.split()[0] for m in media[:2] if m.msid} == {old_stream}
    assert answer.message.stream_metadata is not None and old_stream in answer.message.stream_metadata
    end = await channel.next_sent("m.call.candidates", after=before)
    assert end.call_id == "newcall"
    assert client.call_id == "newcall" and client.state == "joined"
    assert client.peer_connection is not None and client.peer_connection is not old_pc
    assert old_pc is not None and old_pc.connectionState == "closed"
    track = await client.wait_for_track(BOB, "video", timeout=5)
    assert track.device_id == "BOBDEV"
    # The caller's tracks were not stopped with the old connection.
    assert audio.readyState == "live" and video.readyState == "live"
    # Messages for the replaced call are now ignored.
    ignored = client.ignored
    await channel.deliver(
        "m.call.hangup",
        build_conference_hangup(old_call, bot.party, bot.group(), VisioReason.CONFERENCE_ENDED),
    )
    for _ in range(50):
        if client.ignored > ignored:
            break
        await asyncio.sleep(0.02)
    assert client.ignored == ignored + 1 and client.state == "joined"


async def test_negotiate_offer_overtaking_the_answer_is_applied_after_it(
    client: ConferenceClient, channel: FakeChannel, bot: Bot
) -> None:
    """The bot answered, then offered Bob's track, but the offer reached us first: answer, then offer."""
    join = asyncio.create_task(client.join([AudioStreamTrack()]))
    invite = await channel.next_sent("m.call.invite")
    assert isinstance(invite.message, CallInvite)
    bot.client_session = invite.group.sender_session_id
    await bot.pc.setRemoteDescription(RTCSessionDescription(invite.message.offer_sdp, "offer"))
    await bot.pc.setLocalDescription(await bot.pc.createAnswer())
    answer_sdp = bot.pc.localDescription.sdp
    # What the service does today: the relay's next offer goes out (seq 0) before the answer (seq 1).
    await bot.offer_track(invite.call_id, VideoStreamTrack(), "bobstream", BOB)
    answer = build_conference_answer(invite.call_id, bot.party, bot.group(), answer_sdp, stream_metadata={})
    await channel.deliver("m.call.answer", answer)
    await asyncio.wait_for(join, 10)
    reply = await channel.next_sent("m.call.negotiate")
    assert isinstance(reply.message, CallNegotiate) and reply.message.description_type == "answer"
    await bot.pc.setRemoteDescription(RTCSessionDescription(reply.message.sdp, "answer"))
    assert (await client.wait_for_track(BOB, "video", timeout=5)).stream_id == "bobstream"
    assert client.state == "joined"
