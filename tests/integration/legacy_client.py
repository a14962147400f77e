"""A 1:1 Matrix VoIP client written from the spec ("Voice over IP", MSC2746) on plain matrix-nio + aiortc.

It stands for an unmodified Matrix client (Element, Tchap) calling in a DM: it deliberately uses
nothing of ``visio_matrix`` for signaling (no ``visio_matrix.client``, no devstack helpers), so the
bot is checked against the spec rather than against our own assumptions. Only media helpers are
borrowed: ``restrict_ice`` (aioice skips the loopback address the test relay listens on) and the
recognisable tracks of ``visio_matrix.client.media``.

``LegacyClient`` is an E2EE nio client with its own /sync loop that keeps every timeline event
(decrypted when it can, retried when a room key arrives late) as a ``SeenEvent``. ``LegacyCall`` is
one call with real aiortc media: it places a call (invite, candidates with end-of-candidates, answer,
select_answer) or answers one, answers renegotiations, and hangs up, sending a tone and a colour
(``ToneAudioTrack`` / ``ColorVideoTrack``); ``MediaSink`` keeps what arrives (audio samples, last video
picture).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from nio import AsyncClient, AsyncClientConfig, ErrorResponse, MegolmEvent, RoomPreset, SyncResponse
from nio.exceptions import EncryptionError
from nio.store import SqliteStore

from visio_matrix.client.media import ColorVideoTrack, ToneAudioTrack
from visio_matrix.relay import restrict_ice

log = logging.getLogger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
RATE = 48000  # of the audio aiortc decodes


def _check(response: object, what: str) -> Any:
    if isinstance(response, ErrorResponse):
        raise RuntimeError(f"{what}: {response.status_code} {response.message}")
    return response


def voip_id(length: int = 16) -> str:
    """An id from the spec's VoIP grammar ([0-9a-zA-Z._~-], 1-255 characters)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


# ---- media ----------------------------------------------------------------------------------------


class MediaSink:
    """Reads every incoming track: keeps recent audio (mono, 48 kHz) and the last video picture."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.audio: list[np.ndarray] = []
        self.pictures = 0
        self.last_picture: VideoFrame | None = None
        self._readers: list[asyncio.Task[None]] = []

    def attach(self, pc: RTCPeerConnection) -> None:
        pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.kinds.append(track.kind)
        self._readers.append(asyncio.get_running_loop().create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    channels = len(frame.layout.channels)
                    self.audio.append(frame.to_ndarray().reshape(-1, channels)[:, 0].copy())
                    del self.audio[:-150]
                elif isinstance(frame, VideoFrame):
                    self.pictures += 1
                    self.last_picture = frame
        except MediaStreamError:
            return

    def band(self, frequency: float, frames: int = 75) -> float:
        """Energy around ``frequency`` in the last ``frames`` audio frames, relative to the total."""
        if len(self.audio) < frames:
            return 0.0
        samples = np.concatenate(self.audio[-frames:]).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
        total = float(spectrum[freqs > 50].sum()) or 1.0
        return float(spectrum[np.abs(freqs - frequency) < 25].sum()) / total

    def colours(self) -> list[tuple[int, int, int]]:
        """The distinct saturated colours of the last picture (coarse 16x16 blocks)."""
        if self.last_picture is None:
            return []
        rgb = self.last_picture.to_ndarray(format="rgb24").astype(np.int32)
        found: list[tuple[int, int, int]] = []
        h, w = rgb.shape[:2]
        for y in range(0, h - 16, 16):
            for x in range(0, w - 16, 16):
                block = rgb[y : y + 16, x : x + 16].reshape(-1, 3)
                mean = block.mean(axis=0)
                if block.std(axis=0).max() > 12 or mean.max() - mean.min() < 120:
                    continue  # an edge, or grey/black background
                colour = (int(mean[0]), int(mean[1]), int(mean[2]))
                if not any(sum(abs(a - b) for a, b in zip(colour, c, strict=True)) < 90 for c in found):
                    found.append(colour)
        return found

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def new_peer() -> RTCPeerConnection:
    config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    return restrict_ice(RTCPeerConnection(config), ["127.0.0.1"])


def candidates_of(sdp: str) -> list[dict[str, Any]]:
    """The ``a=candidate`` lines of an SDP as spec candidate objects (sdpMid, sdpMLineIndex)."""
    out: list[dict[str, Any]] = []
    index, mid = -1, None
    for line in sdp.splitlines():
        if line.startswith("m="):
            index, mid = index + 1, None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:") and index >= 0:
            out.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
    return out


# ---- Matrix ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenEvent:
    event_id: str
    type: str
    sender: str
    content: dict[str, Any]
    encrypted: bool
    origin_server_ts: int


class LegacyClient:
    """Plain nio with E2EE: one /sync loop, every timeline event kept per room (decrypted if possible)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.events: dict[str, list[SeenEvent]] = {}
        self.members: dict[tuple[str, str], str] = {}
        self._undecrypted: dict[str, list[MegolmEvent]] = {}
        self._changed = asyncio.Condition()
        self._keys = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def login(cls, base_url: str, user_id: str, password: str, store_dir: Path) -> LegacyClient:
        store_dir.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(store=SqliteStore, store_sync_tokens=True, encryption_enabled=True)
        client = AsyncClient(base_url, user_id, store_path=str(store_dir), config=config)
        _check(await client.login(password, device_name="legacy voip client"), f"login {user_id}")
        me = cls(client)
        await me._keys_maintenance()
        await me._sync(0)
        await me._keys_maintenance()
        me._task = asyncio.get_running_loop().create_task(me._loop())
        return me

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self._sync(5000)
                await self._keys_maintenance()
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("legacy client sync failed: %r", exc)
                await asyncio.sleep(1)

    async def _keys_maintenance(self) -> None:
        c = self.client
        async with self._keys:
            if c.outgoing_to_device_messages:
                await c.send_to_device_messages()
            if c.should_upload_keys:
                _check(await c.keys_upload(), "keys_upload")
            if c.should_query_keys:
                _check(await c.keys_query(), "keys_query")
            if c.should_claim_keys:
                _check(await c.keys_claim(c.get_users_for_key_claiming()), "keys_claim")

    async def _sync(self, timeout_ms: int) -> None:
        response = await self.client.sync(timeout=timeout_ms, full_state=True if timeout_ms == 0 else None)
        if not isinstance(response, SyncResponse):
            raise RuntimeError(f"sync: {response}")
        for room_id, info in response.rooms.join.items():
            for event in [*info.state, *info.timeline.events]:
                self._add(room_id, event)
        for room_id in list(self._undecrypted):
            pending, self._undecrypted[room_id] = self._undecrypted[room_id], []
            for event in pending:
                try:
                    self._add(room_id, self.client.decrypt_event(event), encrypted=True)
                except EncryptionError:
                    self._undecrypted[room_id].append(event)
        async with self._changed:
            self._changed.notify_all()

    def _add(self, room_id: str, event: Any, encrypted: bool = False) -> None:
        source: dict[str, Any] = getattr(event, "source", None) or {}
        if source.get("type") == "m.room.member" and isinstance(source.get("state_key"), str):
            self.members[(room_id, source["state_key"])] = str(
                (source.get("content") or {}).get("membership")
            )
        if isinstance(event, MegolmEvent):
            self._undecrypted.setdefault(room_id, []).append(event)
            return
        # nio marks events it decrypted; its schema check may have turned them into a BadEvent
        # (the spec's end-of-candidates entry), which is why the raw source is read here.
        encrypted = encrypted or bool(getattr(event, "decrypted", False)) or "room_id" in source
        self.events.setdefault(room_id, []).append(
            SeenEvent(
                str(source.get("event_id", "")),
                str(source.get("type", "")),
                str(source.get("sender", "")),
                dict(source.get("content") or {}),
                encrypted,
                int(source.get("origin_server_ts", 0) or 0),
            )
        )

    async def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        result: Any = None

        def ready() -> bool:
            nonlocal result
            result = check()
            return bool(result)

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.user_id}: timed out after {timeout}s waiting for {what}") from None
        return result

    async def wait_event(
        self,
        room_id: str,
        predicate: Callable[[SeenEvent], bool],
        timeout: float = 30,
        what: str = "an event",
    ) -> SeenEvent:
        def find() -> SeenEvent | None:
            return next((e for e in self.events.get(room_id, []) if predicate(e)), None)

        event: SeenEvent = await self.wait(find, timeout, what)
        return event

    async def create_room(self, name: str, invite: list[str], direct: bool = False) -> str:
        response = await self.client.room_create(
            name=name,
            invite=invite,
            is_direct=direct,
            preset=RoomPreset.trusted_private_chat if direct else RoomPreset.private_chat,
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
        )
        room_id = str(_check(response, f"create room {name}").room_id)
        await self.wait(
            lambda: room_id in self.client.rooms and self.client.rooms[room_id].encrypted, 30, "room synced"
        )
        return room_id

    async def join(self, room_id: str) -> None:
        _check(await self.client.join(room_id), f"join {room_id}")
        await self.wait(lambda: room_id in self.client.rooms, 30, f"{room_id} synced")

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        await self._keys_maintenance()
        response = await self.client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
        return str(_check(response, f"send {event_type}").event_id)


# ---- one call -------------------------------------------------------------------------------------


class LegacyCall:
    """One spec call in ``room_id``, this client's side: media out (tone + colour), media in (sink)."""

    def __init__(
        self, client: LegacyClient, room_id: str, tone: float, rgb: tuple[int, int, int], call_id: str = ""
    ) -> None:
        self.client = client
        self.room_id = room_id
        self.call_id = call_id or voip_id()
        self.party_id = voip_id(8)
        self.pc = new_peer()
        self.sink = MediaSink()
        self.sink.attach(self.pc)
        self.pc.addTrack(ToneAudioTrack(tone))
        self.pc.addTrack(ColorVideoTrack(rgb))
        self.remote_party: str | None = None
        self.negotiations = 0
        self._watcher: asyncio.Task[None] | None = None

    def _base(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "party_id": self.party_id, "version": "1"}

    def _from_peer(self, event: SeenEvent, event_type: str) -> bool:
        return (
            event.type == event_type
            and event.sender != self.client.user_id
            and event.content.get("call_id") == self.call_id
        )

    async def _send_candidates(self) -> None:
        candidates = candidates_of(self.pc.localDescription.sdp)
        await self.client.send(self.room_id, "m.call.candidates", {**self._base(), "candidates": candidates})
        # The spec's end-of-candidates: an entry whose candidate is the empty string.
        await self.client.send(
            self.room_id, "m.call.candidates", {**self._base(), "candidates": [{"candidate": ""}]}
        )

    async def place(
        self, invitee: str | None = None, lifetime_ms: int = 60_000, timeout: float = 30
    ) -> SeenEvent:
        """Invite, trickle candidates, wait for an answer, apply it, select it. Returns the answer."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        invite: dict[str, Any] = {
            **self._base(),
            "lifetime": lifetime_ms,
            "offer": {"type": "offer", "sdp": self.pc.localDescription.sdp},
        }
        if invitee is not None:
            invite["invitee"] = invitee
        await self.client.send(self.room_id, "m.call.invite", invite)
        await self._send_candidates()
        answer = await self.client.wait_event(
            self.room_id, lambda e: self._from_peer(e, "m.call.answer"), timeout, "m.call.answer"
        )
        await self.pc.setRemoteDescription(RTCSessionDescription(answer.content["answer"]["sdp"], "answer"))
        self.remote_party = str(answer.content["party_id"])
        await self.client.send(
            self.room_id, "m.call.select_answer", {**self._base(), "selected_party_id": self.remote_party}
        )
        self._watch()
        return answer

    async def answer(self, invite: SeenEvent) -> None:
        """Answer an incoming invite (the bot's ring)."""
        self.remote_party = str(invite.content["party_id"])
        await self.pc.setRemoteDescription(RTCSessionDescription(invite.content["offer"]["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.client.send(
            self.room_id,
            "m.call.answer",
            {**self._base(), "answer": {"type": "answer", "sdp": self.pc.localDescription.sdp}},
        )
        await self._send_candidates()
        self._watch()

    async def reject(self, invite: SeenEvent) -> None:
        await self.client.send(self.room_id, "m.call.reject", self._base())

    def _watch(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._renegotiations())

    async def _renegotiations(self) -> None:
        """Answer the remote party's m.call.negotiate offers (the callee is the polite party)."""
        seen: set[str] = set()
        while True:
            event = await self.client.wait_event(
                self.room_id,
                lambda e: self._from_peer(e, "m.call.negotiate") and e.event_id not in seen,
                timeout=3600,
            )
            seen.add(event.event_id)
            description = event.content.get("description") or {}
            if description.get("type") != "offer":
                continue
            await self.pc.setRemoteDescription(RTCSessionDescription(description["sdp"], "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            self.negotiations += 1
            await self.client.send(
                self.room_id,
                "m.call.negotiate",
                {
                    **self._base(),
                    "lifetime": 10_000,
                    "description": {"type": "answer", "sdp": self.pc.localDescription.sdp},
                },
            )

    async def hangup(self, reason: str = "user_hangup") -> None:
        await self.client.send(self.room_id, "m.call.hangup", {**self._base(), "reason": reason})
        await self.close()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self.sink.close()
        await self.pc.close()
