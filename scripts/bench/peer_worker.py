"""A peer process: hosts many publisher and subscriber peer connections, driven over a pipe.

The orchestrator sends ``(command, kwargs)`` tuples and gets ``("ok", result)`` or
``("error", traceback)`` back. Signaling goes to the relay under test: the bench's own relay server
(``mode="bench"``: HTTP ``/publish`` and ``/subscribe``), Janus's VideoRoom (``mode="janus"``), or
through the orchestrator for the direct publisher -> subscriber baseline (``mode="direct"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from . import probes
from .clip import ClipSpec, EncodedClip, EncodedClipTrack, encode_clip
from .janus_client import JanusSession
from .netpatch import use_host_address

RestrictIce = Callable[[RTCPeerConnection, Sequence[str]], RTCPeerConnection]


def _relay_restrict_ice() -> RestrictIce | None:
    """The relay package's helper (one peer connection gathers only on given addresses), if importable."""
    try:
        from visio_matrix.relay import restrict_ice
    except Exception:  # relay package absent or mid-edit: patch aioice process-wide instead
        return None
    return restrict_ice


restrict_ice = _relay_restrict_ice()

CONNECT_TIMEOUT_S = 90.0


def load_clip(clip_dir: str, spec: ClipSpec, seed: int) -> EncodedClip:
    """Encode once per seed; later trials in the same bench run read the cached clip."""
    path = os.path.join(clip_dir, f"clip-{seed}.pickle")
    if os.path.exists(path):
        with open(path, "rb") as f:
            clip: EncodedClip = pickle.load(f)
            return clip
    clip = encode_clip(spec, seed)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(clip, f)
    os.replace(tmp, path)
    return clip


def prefer_vp8(transceiver: Any) -> None:
    caps = RTCRtpSender.getCapabilities("video")
    transceiver.setCodecPreferences(
        [c for c in caps.codecs if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    )


async def wait_connected(pc: RTCPeerConnection, timeout: float = CONNECT_TIMEOUT_S) -> None:
    done = asyncio.Event()

    def check() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    pc.on("connectionstatechange", check)
    check()
    await asyncio.wait_for(done.wait(), timeout)
    if pc.connectionState != "connected":
        raise RuntimeError(f"peer connection {pc.connectionState}")


class Worker:
    def __init__(self) -> None:
        self.mode = "bench"
        self.url = ""
        self.room = 0
        self.clip_dir = ""
        self.spec = ClipSpec()
        self.http: aiohttp.ClientSession | None = None
        self.janus: JanusSession | None = None
        self.pcs: list[RTCPeerConnection] = []
        self.publishers: dict[int, probes.PublisherState] = {}
        self.pub_tracks: dict[int, EncodedClipTrack] = {}
        self.subscribers: dict[int, probes.SubscriberState] = {}
        self.direct_pc: dict[int, RTCPeerConnection] = {}
        self.participant_pcs: dict[int, tuple[RTCPeerConnection, int]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.host = "127.0.0.1"

    def new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if restrict_ice is not None:
            pc = restrict_ice(pc, [self.host])
        self.pcs.append(pc)
        return pc

    async def setup(self, mode: str, url: str, room: int, clip_dir: str, spec: ClipSpec) -> None:
        self.mode, self.url, self.room, self.clip_dir, self.spec = mode, url, room, clip_dir, spec
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        if mode == "janus":
            self.janus = JanusSession(self.http, url)
            await self.janus.create()

    async def prepare(self, pub_ids: list[int]) -> None:
        """Encode (or load) the publishers' clips before any signaling: encoding blocks the loop."""
        for pub_id in pub_ids:
            load_clip(self.clip_dir, self.spec, seed=pub_id + 1)

    # -- publishers -------------------------------------------------------------------------------
    def _publisher_pc(
        self, pub_id: int, pc: RTCPeerConnection | None = None
    ) -> tuple[RTCPeerConnection, Any, Any]:
        clip = load_clip(self.clip_dir, self.spec, seed=pub_id + 1)
        pc = pc or self.new_pc()
        audio = EncodedClipTrack("audio", clip.audio, clip.fps)
        video = EncodedClipTrack("video", clip.video, clip.fps)
        ta = pc.addTransceiver(audio, direction="sendonly")
        tv = pc.addTransceiver(video, direction="sendonly")
        prefer_vp8(tv)
        tv.sender._send_keyframe = video.request_keyframe  # type: ignore[method-assign]
        self.pub_tracks[pub_id] = video
        return pc, ta, tv

    def _probe_publisher(self, pub_id: int, ta: Any, tv: Any) -> None:
        state = probes.PublisherState(pub_id)
        self.publishers[pub_id] = state
        flags = {ta.sender._ssrc: 0, tv.sender._ssrc: probes.FLAG_VIDEO}
        probes.watch_sender_transport(tv.sender.transport, state, flags)

    async def _publish_one(self, pub_id: int) -> float:
        started = time.monotonic()
        pc, ta, tv = self._publisher_pc(pub_id)
        await pc.setLocalDescription(await pc.createOffer())
        if self.mode == "janus":
            assert self.janus is not None
            handle = await self.janus.attach()
            await self.janus.message(
                handle,
                {"request": "join", "ptype": "publisher", "room": self.room, "id": pub_id + 1},
            )
            event = await self.janus.message(
                handle,
                {"request": "publish", "audio": True, "video": True, "bitrate": 0},
                jsep={"type": "offer", "sdp": pc.localDescription.sdp, "trickle": False},
            )
            answer = event["jsep"]["sdp"]
        else:
            answer = (await self._post("/publish", {"peer": pub_id, "sdp": pc.localDescription.sdp}))["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self._probe_publisher(pub_id, ta, tv)
        await wait_connected(pc)
        return time.monotonic() - started

    async def publish(self, pub_ids: list[int]) -> dict[int, float]:
        results = await asyncio.gather(*(self._publish_one(p) for p in pub_ids))
        return dict(zip(pub_ids, results, strict=True))

    # -- subscribers ------------------------------------------------------------------------------
    def _watch_all(self, pc: RTCPeerConnection, state: probes.SubscriberState) -> None:
        probes.watch_subscriber(pc, state)

    async def _subscribe_one(self, sub_id: int, feeds: list[int]) -> float:
        """The relay offers (Janus and the bench server both do); renegotiation rounds until done."""
        state = probes.SubscriberState(sub_id, join_started=time.monotonic())
        self.subscribers[sub_id] = state
        pc = self.new_pc()
        handle = 0
        if self.mode == "janus":
            assert self.janus is not None
            handle = await self.janus.attach()
            event = await self.janus.message(
                handle,
                {
                    "request": "join",
                    "ptype": "subscriber",
                    "room": self.room,
                    "streams": [{"feed": f + 1} for f in feeds],
                },
            )
            offer: str | None = event["jsep"]["sdp"]
        else:
            offer = (await self._post("/subscribe", {"peer": sub_id, "feeds": feeds})).get("offer")
        while offer is not None:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            self._watch_all(pc, state)
            await pc.setLocalDescription(await pc.createAnswer())
            answer = pc.localDescription.sdp
            if self.mode == "janus":
                assert self.janus is not None
                await self.janus.message(
                    handle,
                    {"request": "start", "room": self.room},
                    jsep={"type": "answer", "sdp": answer, "trickle": False},
                )
                offer = None
            else:
                offer = (await self._post("/answer", {"peer": sub_id, "sdp": answer})).get("offer")
        await wait_connected(pc)
        return state.join_started

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(self.url + path, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{path} -> HTTP {resp.status}: {await resp.text()}")
            reply: dict[str, Any] = await resp.json()
            return reply

    async def subscribe(self, subs: list[tuple[int, list[int]]]) -> dict[int, float]:
        results = await asyncio.gather(*(self._subscribe_one(s, f) for s, f in subs))
        return {s: r for (s, _), r in zip(subs, results, strict=True)}

    # -- one connection per participant (our relay): publish and receive on the same connection --
    async def _apply_offer(
        self, home: int, pc: RTCPeerConnection, state: probes.SubscriberState | None, offer: str
    ) -> None:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        if state is not None:
            self._watch_all(pc, state)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._post("/answer", {"peer": home, "sdp": pc.localDescription.sdp})

    async def _renegotiate(
        self, home: int, pc: RTCPeerConnection, state: probes.SubscriberState | None
    ) -> None:
        """Long-poll the relay's offers for this participant and answer each one."""
        while True:
            offer = (await self._post("/poll", {"peer": home})).get("offer")
            if offer is not None:
                await self._apply_offer(home, pc, state, offer)

    async def _join_one(self, home: int, pub: int | None, sub: int | None, feeds: list[int]) -> float:
        started = time.monotonic()
        state = None
        if sub is not None:
            state = probes.SubscriberState(sub, join_started=started)
            self.subscribers[sub] = state
        pc = self.new_pc()
        self.participant_pcs[home] = (pc, len(feeds))
        # Every participant offers first (a LiveKit-style client, as in the relay's own tests); a
        # receive-only participant offers receive-only audio + video. The relay then offers the
        # other participants' tracks (NegotiationNeeded, long-polled by _renegotiate).
        if pub is not None:
            pc, ta, tv = self._publisher_pc(pub, pc)
        else:
            pc.addTransceiver("audio", direction="recvonly")
            prefer_vp8(pc.addTransceiver("video", direction="recvonly"))
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self._post("/join", {"peer": home, "sdp": pc.localDescription.sdp})
        if state is not None:
            self._watch_all(pc, state)
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        if pub is not None:
            self._probe_publisher(pub, ta, tv)
        self.tasks.append(asyncio.create_task(self._renegotiate(home, pc, state)))
        await wait_connected(pc)
        return time.monotonic() - started

    async def join(self, participants: list[tuple[int, int | None, int | None, list[int]]]) -> list[float]:
        return list(await asyncio.gather(*(self._join_one(*p) for p in participants)))

    async def wait_receiving(self, timeout: float = CONNECT_TIMEOUT_S) -> float:
        """Wait until each participant's connection has a negotiated receiving m-line per feed."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [
                home
                for home, (pc, feeds) in self.participant_pcs.items()
                if sum(
                    1 for t in pc.getTransceivers() if t.kind == "video" and t.currentDirection == "recvonly"
                )
                < feeds
            ]
            if not missing:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"participants {missing} still lack negotiated video m-lines")
            await asyncio.sleep(0.1)

    # -- direct publisher -> subscriber baseline (signaling relayed by the orchestrator) ----------
    async def direct_offer(self, pub_id: int) -> str:
        pc, ta, tv = self._publisher_pc(pub_id)
        self.direct_pc[pub_id] = pc
        self._direct_tx = (ta, tv)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def direct_answer(self, sub_id: int, offer: str) -> str:
        state = probes.SubscriberState(sub_id, join_started=time.monotonic())
        self.subscribers[sub_id] = state
        pc = self.new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        self._watch_all(pc, state)
        await pc.setLocalDescription(await pc.createAnswer())
        self.direct_pc[-1 - sub_id] = pc
        return str(pc.localDescription.sdp)

    async def direct_finish(self, pub_id: int, answer: str) -> None:
        pc = self.direct_pc[pub_id]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self._probe_publisher(pub_id, *self._direct_tx)
        await wait_connected(pc)

    async def wait_direct_connected(self) -> None:
        await asyncio.gather(*(wait_connected(pc) for pc in self.direct_pc.values()))

    # -- measurement ------------------------------------------------------------------------------
    async def record(self, on: bool) -> float:
        for p in self.publishers.values():
            p.recording = on
        for s in self.subscribers.values():
            s.recording = on
        return time.monotonic()

    async def collect(self) -> dict[str, Any]:
        return {
            "publishers": {p: probes.log_to_dict(st.log) for p, st in self.publishers.items()},
            "keyframes_sent": {p: t.keyframes_sent for p, t in self.pub_tracks.items()},
            "subscribers": {
                s: {
                    "log": probes.log_to_dict(st.log),
                    "join_started": st.join_started,
                    "first_packet": st.first_packet,
                    "first_keyframe": st.first_keyframe,
                    "plis_sent": st.plis_sent,
                    "rtx_packets": st.rtx_packets,
                }
                for s, st in self.subscribers.items()
            },
        }

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await asyncio.gather(*(pc.close() for pc in self.pcs), return_exceptions=True)
        self.pcs.clear()
        if self.janus is not None:
            await self.janus.destroy()
        if self.http is not None:
            await self.http.close()


async def _serve(conn: Connection, host: str) -> None:
    worker = Worker()
    worker.host = host
    loop = asyncio.get_running_loop()
    while True:
        message = await loop.run_in_executor(None, conn.recv)
        name, kwargs = message
        if name == "exit":
            with contextlib.suppress(Exception):
                await worker.close()
            conn.send(("ok", None))
            return
        try:
            result = await getattr(worker, name)(**kwargs)
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def worker_main(conn: Connection, host: str) -> None:
    """Entry point of a peer process (multiprocessing ``spawn`` target)."""
    if restrict_ice is None:
        use_host_address(host)
    probes.install_receiver_probe()
    asyncio.run(_serve(conn, host))
