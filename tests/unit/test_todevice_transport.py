"""The to-device transport's shell: the outgoing batcher (coalescing, per-device failures, a bad
message isolated) and the expiry of offers a participant never answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from visio_matrix.calls.todevice import _Batcher
from visio_matrix.crypto.todevice import OutgoingToDevice, ToDeviceError
from visio_matrix.tasks import TaskOwner


class FakeChannel:
    def __init__(self) -> None:
        self.requests: list[list[tuple[str, str, str]]] = []
        self.unreachable: set[str] = set()
        self.too_large: set[str] = set()

    async def send_many(self, messages: Sequence[OutgoingToDevice]) -> dict[tuple[str, str], str]:
        self.requests.append([(m.device_id, m.type, str(m.content.get("n", ""))) for m in messages])
        await asyncio.sleep(0.01)  # the homeserver's reply
        if any(m.content.get("n") in self.too_large for m in messages):
            raise ToDeviceError("M_TOO_LARGE")
        return {
            (m.user_id, m.device_id): "no such device" for m in messages if m.device_id in self.unreachable
        }


async def test_messages_queued_during_a_request_leave_together_in_order() -> None:
    channel, tasks = FakeChannel(), TaskOwner("t")
    batcher = _Batcher(channel, tasks)  # type: ignore[arg-type]
    await asyncio.gather(
        *(batcher.send("@u:hs", f"D{i % 3}", "m.call.negotiate", {"n": str(i)}) for i in range(9))
    )
    assert len(channel.requests) < 9  # coalesced
    sent = [entry for request in channel.requests for entry in request]
    for device in ("D0", "D1", "D2"):
        assert [n for d, _, n in sent if d == device] == sorted(
            (n for d, _, n in sent if d == device), key=int
        )
    assert batcher.messages == 9
    await tasks.close()


async def test_unreachable_device_fails_only_its_own_send() -> None:
    channel, tasks = FakeChannel(), TaskOwner("t")
    channel.unreachable.add("GONE")
    batcher = _Batcher(channel, tasks)  # type: ignore[arg-type]
    results = await asyncio.gather(
        batcher.send("@u:hs", "OK", "m.call.answer", {"n": "1"}),
        batcher.send("@u:hs", "GONE", "m.call.answer", {"n": "2"}),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], ToDeviceError) and "no such device" in str(results[1])
    await tasks.close()


async def test_a_message_the_homeserver_refuses_does_not_sink_the_others() -> None:
    channel, tasks = FakeChannel(), TaskOwner("t")
    channel.too_large.add("big")
    batcher = _Batcher(channel, tasks)  # type: ignore[arg-type]
    first = asyncio.ensure_future(batcher.send("@u:hs", "A", "m.call.negotiate", {"n": "0"}))
    await asyncio.sleep(0)  # the first request is in flight: the next three are queued together
    rest = await asyncio.gather(
        batcher.send("@u:hs", "A", "m.call.negotiate", {"n": "1"}),
        batcher.send("@u:hs", "B", "m.call.negotiate", {"n": "big"}),
        batcher.send("@u:hs", "C", "m.call.negotiate", {"n": "3"}),
        return_exceptions=True,
    )
    await first
    assert rest[0] is None and rest[2] is None
    assert isinstance(rest[1], ToDeviceError)
    assert ["big"] in [[n for _, _, n in r] for r in channel.requests]  # retried alone after the failure
    await tasks.close()


class FakeHub:
    def __init__(self) -> None:
        self.left: list[tuple[str, str]] = []

    def take_restorable(self, transport: object) -> list[object]:
        return []

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        self.left.append((participant_id, reason))


async def test_an_offer_left_unanswered_ends_that_participants_call() -> None:
    from visio_matrix.calls.todevice import OFFER_TIMEOUT_S, ToDeviceCalls, _Call
    from visio_matrix.clock import FakeClock
    from visio_matrix.relay.api import Negotiated

    channel, hub, clock = FakeChannel(), FakeHub(), FakeClock()
    calls = ToDeviceCalls(channel, hub, "@visio:hs", "BOT", clock)  # type: ignore[arg-type]
    quick = _Call(calls, "@a:hs", "A", "call-a", "pa", "sa", participant_id="PA_a")
    slow = _Call(calls, "@b:hs", "B", "call-b", "pb", "sb", participant_id="PA_b")
    for call in (quick, slow):
        call.opened.set()
        calls._calls[(call.user_id, call.device_id)] = call
        await call.send_offer(Negotiated("v=0\r\n", ()))
    quick.awaiting_answer = False  # answered
    clock.advance(OFFER_TIMEOUT_S - 1)
    assert await calls.expire_offers() == 0
    clock.advance(2)
    assert await calls.expire_offers() == 1
    assert hub.left == [("PA_b", "media_failed")]
    hangups = [r for r in channel.requests if r[0][1] == "m.call.hangup"]
    assert [r[0][0] for r in hangups] == ["B"]
    await calls.stop()


def test_stream_metadata_names_matrix_users_only() -> None:
    """A guest's id is not a Matrix user ID: naming it would make clients refuse the whole message."""
    from visio_matrix.calls.todevice import stream_metadata
    from visio_matrix.relay.api import StreamInfo
    from visio_matrix.signaling.build import stream_metadata_content
    from visio_matrix.signaling.parse import parse_stream_metadata

    def info(stream: str, user: str, device: str) -> StreamInfo:
        return StreamInfo(
            stream, "t", "0", "video", "m.usermedia", "PA_x", "t", {"user_id": user, "device_id": device}
        )

    metadata = stream_metadata((info("s1", "@alice:hs", "ALICE"), info("s2", "guest:Zx9", "Zx9")))
    assert metadata["s1"].user_id == "@alice:hs"
    assert metadata["s2"].user_id is None and metadata["s2"].device_id == "Zx9"
    parsed = parse_stream_metadata(stream_metadata_content(metadata), "sdp_stream_metadata")
    assert parsed["s1"].user_id == "@alice:hs"  # the whole map parses on the client side
