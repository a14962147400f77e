"""Pure parts of the reference client: remote media from SDP, the track set, focus discovery from a notice."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack

from visio_matrix.client.matrix import Focus, focus_from_content
from visio_matrix.client.tracks import RemoteMedia, RemoteTracks, StreamIdentity, describe_remote_media

HEADER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3\r\n"


def section(kind: str, mid: str, direction: str, msid: str | None) -> str:
    pt = "111" if kind == "audio" else "96"
    codec = "opus/48000/2" if kind == "audio" else "VP8/90000"
    lines = [
        f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}",
        "c=IN IP4 0.0.0.0",
        f"a={direction}",
        f"a=mid:{mid}",
    ]
    if msid is not None:
        lines.append(f"a=msid:{msid}")
    lines += [f"a=rtpmap:{pt} {codec}", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx"]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        pytest.param(
            [section("audio", "0", "sendonly", "s1 t1"), section("video", "1", "sendonly", "s1 t2")],
            [RemoteMedia("0", "audio", "s1", "t1"), RemoteMedia("1", "video", "s1", "t2")],
            id="sending m-lines named by msid",
        ),
        pytest.param(
            [section("audio", "0", "recvonly", None), section("video", "1", "sendrecv", "s2 t3")],
            [RemoteMedia("1", "video", "s2", "t3")],
            id="recvonly (our own tracks) skipped; sendrecv kept",
        ),
        pytest.param(
            [section("video", "0", "inactive", "s1 t1"), section("video", "1", "sendonly", "s3 t4")],
            [RemoteMedia("1", "video", "s3", "t4")],
            id="inactive (unpublished) m-line dropped",
        ),
        pytest.param(
            [section("video", "0", "sendonly", None), section("audio", "1", "sendonly", "only-one-part")],
            [],
            id="no msid or a malformed one: cannot be named, skipped",
        ),
    ],
)
def test_describe_remote_media(sections: list[str], expected: list[RemoteMedia]) -> None:
    assert list(describe_remote_media(HEADER + "".join(sections))) == expected


def test_describe_remote_media_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="unreadable SDP"):
        describe_remote_media("m=audio notaport\r\n")


async def test_remote_tracks_update_find_and_wait() -> None:
    tracks = RemoteTracks()
    audio, video = AudioStreamTrack(), VideoStreamTrack()
    receivers: dict[str, MediaStreamTrack] = {"0": audio, "1": video}
    media = (RemoteMedia("0", "audio", "s1", "t1"), RemoteMedia("1", "video", "s1", "t2"))
    waiter = asyncio.create_task(tracks.wait_for("@bob:x", "video", timeout=5))
    await asyncio.sleep(0)
    await tracks.update(media, receivers.get, {"s1": StreamIdentity("m.usermedia", "@bob:x", "BOBDEV")})
    found = await waiter
    assert (found.track, found.user_id, found.device_id, found.mid, found.stream_id) == (
        video,
        "@bob:x",
        "BOBDEV",
        "1",
        "s1",
    )
    assert len(tracks) == 2
    assert tracks.find("@bob:x", "audio") is not None
    assert tracks.find("@bob:x", "audio", purpose="m.screenshare") is None
    # A stream without metadata keeps its track, with no identity.
    await tracks.update(media, receivers.get, {})
    assert [t.user_id for t in tracks] == [None, None]
    # No receiver track for a mid: not listed.
    await tracks.update(media, {"0": audio}.get, {})
    assert [t.mid for t in tracks] == ["0"]


async def test_remote_tracks_clear_with_error_wakes_waiters_until_next_update() -> None:
    tracks = RemoteTracks()
    waiter = asyncio.create_task(tracks.wait_for("@bob:x", "audio", timeout=5))
    await asyncio.sleep(0)
    await tracks.clear(RuntimeError("call over"))
    with pytest.raises(RuntimeError, match="call over"):
        await waiter
    with pytest.raises(RuntimeError, match="call over"):
        await tracks.wait_for("@bob:x", "audio", timeout=5)
    audio = AudioStreamTrack()
    await tracks.update(
        (RemoteMedia("0", "audio", "s", "t"),), {"0": audio}.get, {"s": StreamIdentity(user_id="@bob:x")}
    )
    assert (await tracks.wait_for("@bob:x", "audio", timeout=1)).track is audio


async def test_remote_tracks_wait_times_out_clearly() -> None:
    with pytest.raises(TimeoutError, match=r"no video track from @carol:x after 0\.05s"):
        await RemoteTracks().wait_for("@carol:x", "video", timeout=0.05)


BOT = "@visio:example.org"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"io.visio.conference": {"conf_id": "c1", "focus": {"user_id": BOT, "device_id": "DEV"}}},
            Focus(BOT, "DEV", "c1"),
        ),
        ({"io.visio.conference": {"focus": {"device_id": "DEV"}}}, Focus(BOT, "DEV", "")),
        (
            {
                "m.new_content": {
                    "io.visio.conference": {"conf_id": "c2", "focus": {"user_id": BOT, "device_id": "D2"}}
                }
            },
            Focus(BOT, "D2", "c2"),
        ),
        ({"io.visio.conference": {"conf_id": "c1", "ended": True}}, None),
        ({"io.visio.conference": {"focus": {"user_id": "@other:x", "device_id": "DEV"}}}, None),
        ({"io.visio.conference": {"focus": {"user_id": BOT, "device_id": ""}}}, None),
        ({"io.visio.conference": {"focus": "DEV"}}, None),
        ({"io.visio.conference": "c1"}, None),
        ({"body": "Call started"}, None),
    ],
)
def test_focus_from_notice_content(content: dict[str, object], expected: Focus | None) -> None:
    assert focus_from_content(content, BOT) == expected
