"""Matrix side of the reference client: a logged-in E2EE nio client with its own /sync loop, and discovery.

`login_client` logs a user in as a new device (keys in a persistent SQLite store), uploads its keys and
starts one owned /sync loop that also does nio's key maintenance (one-time keys, device lists, key
claims), as nio's ``sync_forever`` would. ``close()`` stops the loop and closes the HTTP session.

`find_focus_device` finds the bot device to talk to: the ``io.visio.conference`` field of the bot's
latest conference notice in the room (``focus.device_id``), else the bot's only device.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    LoginResponse,
    RoomMessagesResponse,
    SyncResponse,
)
from nio.store import SqliteStore

from visio_matrix.crypto.todevice import SecureToDeviceChannel
from visio_matrix.signaling.messages import CALL_EVENT_TYPES
from visio_matrix.tasks import TaskOwner

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 10_000
CONFERENCE_FIELD = "io.visio.conference"


class MatrixClientError(RuntimeError):
    """The homeserver refused a request (login, sync, key upload...)."""


def _check(response: object, what: str) -> Any:
    if isinstance(response, ErrorResponse):
        raise MatrixClientError(f"{what}: {response.status_code} {response.message}")
    return response


class VisioMatrixClient:
    """A logged-in nio ``AsyncClient`` with E2EE, an owned background /sync loop, and the client's one
    Olm to-device channel for call signaling (``to_device``: pass it to ``ConferenceClient``)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.to_device = SecureToDeviceChannel(client, types=CALL_EVENT_TYPES)
        self._tasks = TaskOwner(f"matrix-client {client.user_id}")
        self._synced = asyncio.Condition()

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    async def start(self) -> None:
        """First sync (with key upload around it), then the background loop."""
        self.to_device.install()  # before the first sync, or its to-device events would be dropped
        await self._key_maintenance()
        await self._sync_once(timeout_ms=0)
        await self._key_maintenance()
        self._tasks.spawn(self._sync_loop(), "sync")

    async def close(self) -> None:
        await self._tasks.close()
        await self.to_device.close()
        await self.client.close()

    async def wait_for_sync(self, timeout: float) -> None:
        """Wait until the next /sync response has been processed."""
        async with self._synced:
            await asyncio.wait_for(self._synced.wait(), timeout)

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync_once(timeout_ms=SYNC_TIMEOUT_MS)
                await self._key_maintenance()
            except (MatrixClientError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("%s: sync failed (%r); retrying in 1s", self.user_id, error)
                await asyncio.sleep(1)

    async def _sync_once(self, timeout_ms: int) -> None:
        response = await self.client.sync(timeout=timeout_ms, full_state=True if timeout_ms == 0 else None)
        if not isinstance(response, SyncResponse):
            raise MatrixClientError(f"sync: {response}")
        async with self._synced:
            self._synced.notify_all()

    async def _key_maintenance(self) -> None:
        client = self.client
        async with self.to_device.keys_lock:  # nio must not claim keys for a device twice at once
            if client.outgoing_to_device_messages:
                await client.send_to_device_messages()
            if client.should_upload_keys:
                _check(await client.keys_upload(), "keys_upload")
            if client.should_query_keys:
                _check(await client.keys_query(), "keys_query")
            if client.should_claim_keys:
                _check(await client.keys_claim(client.get_users_for_key_claiming()), "keys_claim")


async def login_client(
    homeserver_url: str, user_id: str, password: str, store_dir: str | Path, device_name: str = "visio-client"
) -> VisioMatrixClient:
    """Log in as a new E2EE device (keys kept in ``store_dir``) and start syncing."""
    store = Path(store_dir)
    await asyncio.to_thread(store.mkdir, parents=True, exist_ok=True)
    config = AsyncClientConfig(store=SqliteStore, store_sync_tokens=True, encryption_enabled=True)
    client = AsyncClient(homeserver_url, user_id, store_path=str(store), config=config)
    try:
        response = await client.login(password, device_name=device_name)
        if not isinstance(response, LoginResponse):
            raise MatrixClientError(f"login {user_id}: {response}")
        wrapped = VisioMatrixClient(client)
        await wrapped.start()
    except BaseException:
        await client.close()
        raise
    return wrapped


@dataclass(frozen=True)
class Focus:
    """The bot device that serves a room's conference, and the conference id if announced."""

    user_id: str
    device_id: str
    conf_id: str = ""


def focus_from_content(content: dict[str, Any], bot_user_id: str) -> Focus | None:
    """The focus announced by one event content (``io.visio.conference``, also inside an edit's
    ``m.new_content``: the bot edits its status message), or None if absent/invalid."""
    conference = content.get(CONFERENCE_FIELD)
    new_content = content.get("m.new_content")
    if not isinstance(conference, dict) and isinstance(new_content, dict):
        conference = new_content.get(CONFERENCE_FIELD)
    if not isinstance(conference, dict):
        return None
    focus = conference.get("focus")
    if not isinstance(focus, dict):
        return None
    device_id, user_id = focus.get("device_id"), focus.get("user_id", bot_user_id)
    if not isinstance(device_id, str) or not device_id or user_id != bot_user_id:
        return None
    conf_id = conference.get("conf_id")
    return Focus(bot_user_id, device_id, conf_id if isinstance(conf_id, str) else "")


class DiscoveryError(RuntimeError):
    """No bot device to talk to could be found."""


async def find_focus_device(client: AsyncClient, room_id: str, bot_user_id: str, history: int = 50) -> Focus:
    """The bot device for ``room_id``: the latest conference notice's focus, else the bot's only device.

    Reads the last ``history`` room events (decrypted when this device has their room key), then the
    bot's devices from a keys query.
    """
    response = await client.room_messages(room_id, limit=history)
    if isinstance(response, RoomMessagesResponse):
        for event in response.chunk:  # newest first
            source: dict[str, Any] = getattr(event, "source", None) or {}
            if source.get("sender") != bot_user_id:
                continue
            focus = focus_from_content(dict(source.get("content") or {}), bot_user_id)
            if focus is not None:
                return focus
    else:
        log.warning("could not read the history of %s: %s", room_id, response)
    if client.olm is None:
        raise DiscoveryError("this client has no E2EE machine (log in with encryption enabled first)")
    if not any(True for _ in client.device_store.active_user_devices(bot_user_id)):
        # Not tracked yet (no shared encrypted room synced so far): ask for the bot's keys now.
        client.olm.users_for_key_query.add(bot_user_id)
    if client.should_query_keys:
        _check(await client.keys_query(), "keys_query")
    devices = list(client.device_store.active_user_devices(bot_user_id))
    if len(devices) == 1:
        return Focus(bot_user_id, devices[0].id)
    if not devices:
        raise DiscoveryError(f"{bot_user_id} has no device with E2EE keys")
    names = ", ".join(sorted(d.id for d in devices))
    raise DiscoveryError(
        f"{bot_user_id} has several devices ({names}) and no conference notice in {room_id} names one"
    )
