"""The bot's own Matrix device: identity keys, Olm/Megolm sessions, a /sync loop, encrypted I/O.

The device acts with the appservice token (``as_token``) plus ``user_id``/``device_id`` query
parameters (appservice device masquerading, spec v1.17), so no access token is kept at rest: only
the device ID (in the service's store) and the nio key store (encrypted with ``pickle_key``).
The device is created once with the appservice login; a restart reuses it, keeping its keys, so
rooms keep trusting it.

Room events reach the service through appservice transactions; this device's /sync loop exists for
what stock homeservers only deliver there: to-device messages (room keys), device list changes and
one-time-key counts, plus the room state nio needs to encrypt (members, encryption settings).
Olm to-device messages of other types (call signaling) go through ``to_device``, a
`SecureToDeviceChannel` installed before the first /sync.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    Event,
    JoinError,
    MegolmEvent,
    RoomGetStateError,
    RoomGetStateEventError,
    RoomPutStateError,
    RoomSendError,
    SyncError,
)
from nio.store import SqliteStore

from visio_matrix.appservice.events import RoomEvent
from visio_matrix.appservice.homeserver import HomeserverClient, MatrixError
from visio_matrix.crypto.cross_signing import ensure_cross_signed
from visio_matrix.crypto.todevice import SecureToDeviceChannel
from visio_matrix.metrics import Metrics
from visio_matrix.tasks import TaskOwner

log = logging.getLogger(__name__)

DEVICE_STATE_KEY = "bot.device_id"
SYNC_FILTER: dict[str, Any] = {
    "room": {"timeline": {"limit": 5}, "ephemeral": {"not_types": ["*"]}},
    "presence": {"not_types": ["*"]},
}


class StateStore(Protocol):
    async def get_state(self, key: str) -> str | None: ...

    async def set_state(self, key: str, value: str) -> None: ...


class BotDeviceError(Exception):
    pass


@dataclass(frozen=True)
class Decrypted:
    type: str
    content: dict[str, Any]
    sender_key: str
    verified: bool


@dataclass(frozen=True)
class Undecryptable:
    reason: str
    waiting_for_keys: bool


class AppserviceAsyncClient(AsyncClient):
    """A nio client acting as one device of an appservice user (as_token + user_id + device_id)."""

    async def send(
        self,
        method: str,
        path: str,
        data: Any = None,
        headers: dict[str, str] | None = None,
        trace_context: Any | None = None,
        timeout: float | None = None,
    ) -> aiohttp.ClientResponse:
        sep = "&" if "?" in path else "?"
        path = f"{path}{sep}{urlencode({'user_id': self.user_id, 'device_id': self.device_id})}"
        return await super().send(method, path, data, headers, trace_context, timeout)


class _DeviceKeysApi:
    """The key endpoints cross-signing needs, called as the bot's device with the as_token."""

    def __init__(self, hs: HomeserverClient, user_id: str, device_id: str) -> None:
        self._hs, self._user_id, self._device_id = hs, user_id, device_id

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._hs.request("POST", path, body, user_id=self._user_id, device_id=self._device_id)

    async def query_own_keys(self) -> dict[str, Any]:
        return await self._post("/_matrix/client/v3/keys/query", {"device_keys": {self._user_id: []}})

    async def upload_cross_signing_keys(self, body: dict[str, Any]) -> None:
        await self._post("/_matrix/client/v3/keys/device_signing/upload", body)

    async def upload_signatures(self, body: dict[str, Any]) -> None:
        result = await self._post("/_matrix/client/v3/keys/signatures/upload", body)
        if result.get("failures"):
            raise MatrixError(200, "M_UNKNOWN", f"signature upload failures: {result['failures']}")


class BotDevice:
    def __init__(
        self,
        *,
        homeserver: HomeserverClient,
        as_token: str,
        user_id: str,
        store_dir: Path,
        pickle_key: str,
        state: StateStore,
        metrics: Metrics,
        device_display_name: str = "visio-matrix bot",
    ) -> None:
        self._hs_client = homeserver
        self._hs = homeserver.base_url
        self._as_token = as_token
        self.user_id = user_id
        self._localpart = user_id[1:].split(":", 1)[0]
        self._store_dir = store_dir
        self._pickle_key = pickle_key
        self._state = state
        self._metrics = metrics
        self._display_name = device_display_name
        self._client: AppserviceAsyncClient | None = None
        self._to_device: SecureToDeviceChannel | None = None
        self._tasks = TaskOwner("bot-device")
        self._synced = asyncio.Condition()
        self._sync_count = 0
        self._encrypted_rooms: set[str] = set()
        self.master_key: str | None = None

    # ---- life cycle -------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.client.device_id

    @property
    def client(self) -> AppserviceAsyncClient:
        if self._client is None:
            raise BotDeviceError("bot device not started")
        return self._client

    @property
    def to_device(self) -> SecureToDeviceChannel:
        """Encrypted to-device messages of any type (see `SecureToDeviceChannel`)."""
        if self._to_device is None:
            raise BotDeviceError("bot device not started")
        return self._to_device

    async def start(self) -> None:
        """Create or reuse the device, load its keys, sync once, upload keys, then sync forever."""
        hs = self._hs_client
        if await hs.register_appservice_user(self._localpart):
            log.info("registered bot user %s", self.user_id)
        device_id = await self._state.get_state(DEVICE_STATE_KEY)
        if device_id is None or not await hs.device_exists(self.user_id, device_id):
            if device_id is not None:
                log.warning("bot device %s is gone from the homeserver: creating a new device", device_id)
            device_id = await hs.create_device(self._localpart, self._display_name)
            await self._state.set_state(DEVICE_STATE_KEY, device_id)
            log.info("created bot device %s", device_id)
        else:
            log.info("reusing bot device %s", device_id)

        self._store_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._store_dir, 0o700)
        config = AsyncClientConfig(
            store=SqliteStore,
            store_sync_tokens=True,
            encryption_enabled=True,
            pickle_key=self._pickle_key,
            max_timeouts=None,
        )
        client = AppserviceAsyncClient(
            self._hs, self.user_id, device_id, store_path=str(self._store_dir), config=config
        )
        client.restore_login(self.user_id, device_id, self._as_token)
        self._client = client
        # restore_login loaded the Olm machine; hook it before the first /sync delivers to-device events.
        self._to_device = SecureToDeviceChannel(client)
        self._to_device.install()
        await self._sync_once(full_state=True, timeout_ms=0)
        await self._maintain_keys()
        try:
            self.master_key = await ensure_cross_signed(
                _DeviceKeysApi(self._hs_client, self.user_id, device_id),
                self._state,
                self.user_id,
                device_id,
                self._pickle_key,
            )
        except MatrixError as exc:
            log.warning("could not cross-sign the bot device: %s", exc)
        log.info(
            "bot device %s ready (ed25519 %s), in %d rooms",
            device_id,
            client.olm.account.identity_keys["ed25519"] if client.olm else "?",
            len(client.rooms),
        )
        self._tasks.spawn(self._sync_forever(), "sync")

    async def stop(self) -> None:
        await self._tasks.close()
        if self._to_device is not None:
            await self._to_device.close()
            self._to_device = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- sync ---------------------------------------------------------------------------------

    async def _sync_once(self, full_state: bool = False, timeout_ms: int = 30_000) -> None:
        client = self.client
        with self._metrics.sync_latency.time():
            resp = await client.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER, full_state=full_state)
        if isinstance(resp, SyncError):
            raise BotDeviceError(f"sync failed: {resp.status_code} {resp.message}")
        async with self._synced:
            self._sync_count += 1
            self._synced.notify_all()

    async def _maintain_keys(self) -> None:
        client = self.client
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            async with self.to_device.keys_lock:  # never two claims for one device at once
                await client.keys_claim(client.get_users_for_key_claiming())
        await client.send_to_device_messages()

    async def _sync_forever(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self._sync_once()
                await self._maintain_keys()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bot sync failed (%s); retrying in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def wait_for_sync(self, timeout: float) -> bool:
        """Wait until the next /sync response has been processed. False on timeout."""
        async with self._synced:
            start = self._sync_count
            try:
                await asyncio.wait_for(self._synced.wait_for(lambda: self._sync_count > start), timeout)
            except TimeoutError:
                return False
        return True

    # ---- rooms --------------------------------------------------------------------------------

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        if isinstance(resp, JoinError):
            raise BotDeviceError(f"could not join {room_id}: {resp.status_code} {resp.message}")

    async def leave(self, room_id: str) -> None:
        await self.client.room_leave(room_id)

    async def get_state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        resp = await self.client.room_get_state_event(room_id, event_type, state_key)
        if isinstance(resp, RoomGetStateEventError):
            if resp.status_code == "M_NOT_FOUND":
                return None
            raise BotDeviceError(
                f"could not read {event_type} in {room_id}: {resp.status_code} {resp.message}"
            )
        return dict(resp.content)

    async def put_state(self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]) -> str:
        """Send a state event (never encrypted: state is not); its event id. BotDeviceError if refused."""
        resp = await self.client.room_put_state(room_id, event_type, content, state_key)
        if isinstance(resp, RoomPutStateError):
            raise BotDeviceError(
                f"could not set {event_type} in {room_id}: {resp.status_code} {resp.message}"
            )
        return str(resp.event_id)

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        """The room's current state events, in full (sender included), from the homeserver."""
        resp = await self.client.room_get_state(room_id)
        if isinstance(resp, RoomGetStateError):
            raise BotDeviceError(f"could not read the state of {room_id}: {resp.status_code} {resp.message}")
        return [e for e in resp.events if isinstance(e, dict)]

    async def _room_is_encrypted(self, room_id: str) -> bool:
        if room_id in self._encrypted_rooms:
            return True
        if await self.get_state_event(room_id, "m.room.encryption") is not None:
            self._encrypted_rooms.add(room_id)
            return True
        return False

    def note_encrypted(self, room_id: str) -> None:
        """Seen an encrypted event in the room: never send plaintext there."""
        self._encrypted_rooms.add(room_id)

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], timeout: float = 20.0
    ) -> str:
        """Send a room event, Megolm-encrypted when the room is encrypted. Returns the event ID.

        Encryption is decided from the room's state on the homeserver, not only from what this
        device has synced, so a fresh room is never sent plaintext by mistake.
        """
        client = self.client
        encrypted = await self._room_is_encrypted(room_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while room_id not in client.rooms or (encrypted and not client.rooms[room_id].encrypted):
            if loop.time() > deadline:
                raise BotDeviceError(f"room {room_id} not synced by the bot device in {timeout:.0f}s")
            await self.wait_for_sync(timeout=max(0.1, deadline - loop.time()))
        resp = await client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
        if isinstance(resp, RoomSendError):
            raise BotDeviceError(f"could not send to {room_id}: {resp.status_code} {resp.message}")
        return str(resp.event_id)

    async def send_to_device(
        self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]
    ) -> None:
        """Olm-encrypted to-device message to one device (`ToDeviceError` if it cannot be reached)."""
        await self.to_device.send(user_id, device_id, event_type, content)

    # ---- decryption ---------------------------------------------------------------------------

    def decrypt(self, event: RoomEvent) -> Decrypted | Undecryptable:
        """Decrypt a Megolm room event from a transaction."""
        self.note_encrypted(event.room_id)
        parsed = Event.parse_event(dict(event.raw))
        if not isinstance(parsed, MegolmEvent):
            return Undecryptable(
                f"not a valid Megolm event ({type(parsed).__name__})", waiting_for_keys=False
            )
        parsed.room_id = event.room_id
        olm = self.client.olm
        if olm is None:
            return Undecryptable("encryption is not enabled", waiting_for_keys=False)
        try:
            clear = olm.decrypt_megolm_event(parsed, event.room_id)
        except EncryptionError as exc:
            return Undecryptable(str(exc), waiting_for_keys=True)
        source = getattr(clear, "source", None)
        if not isinstance(source, dict) or not isinstance(source.get("content"), dict):
            return Undecryptable("decrypted payload has no content", waiting_for_keys=False)
        return Decrypted(
            type=str(source.get("type", "")),
            content=source["content"],
            sender_key=parsed.sender_key,
            verified=bool(getattr(clear, "verified", False)),
        )

    async def query_keys(self, user_ids: list[str]) -> dict[str, Any]:
        """The raw ``/keys/query`` answer for ``user_ids`` (all their devices), asked as this device;
        the homeserver fetches remote users' keys over federation (``MatrixError`` on failure)."""
        return await self._hs_client.request(
            "POST",
            "/_matrix/client/v3/keys/query",
            {"device_keys": {user_id: [] for user_id in user_ids}},
            user_id=self.user_id,
            device_id=self.device_id,
        )

    def identity_keys(self) -> dict[str, str]:
        olm = self.client.olm
        return dict(olm.account.identity_keys) if olm else {}
