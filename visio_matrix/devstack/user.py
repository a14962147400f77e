"""An end-to-end-encrypting Matrix user on matrix-nio (vodozemac): "a human with Element" for tests.

`MatrixUser` logs in (or restores a session) with a persistent `SqliteStore`, uploads its device keys,
and runs one owned background `/sync` loop that keeps one-time keys topped up, tracks device lists,
sends queued to-device messages, and collects every room timeline event into a buffer of
`MessageView`s. Megolm events that cannot be decrypted yet stay in the buffer and are retried after
every sync, so a message whose room key arrives later becomes readable. Waiters
(`wait_for_message`, `wait_for_membership`) look at the buffer first, then wait for the next sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    BadEvent,
    ErrorResponse,
    Event,
    InviteMemberEvent,
    JoinResponse,
    MegolmEvent,
    RoomMemberEvent,
    RoomPreset,
    SyncResponse,
    UnknownBadEvent,
)
from nio.exceptions import EncryptionError
from nio.store import SqliteStore

log = logging.getLogger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
SYNC_TIMEOUT_MS = 10_000


class MatrixUserError(RuntimeError):
    """The homeserver refused a request, or the sync loop died."""


@dataclass(frozen=True)
class MessageView:
    """One non-state room timeline event as the user sees it (after decryption when possible)."""

    event_id: str
    sender: str
    body: str | None
    content: dict[str, Any]
    encrypted: bool
    decrypted: bool
    origin_server_ts: int
    type: str = "m.room.message"


def message_view(event: Event) -> MessageView | None:
    """The view of a timeline event, or None for state events (membership, names, ...)."""
    source: dict[str, Any] = getattr(event, "source", None) or {}
    if "state_key" in source:
        return None
    if isinstance(event, MegolmEvent):
        encrypted, decrypted, content = True, False, dict(source.get("content") or {})
        event_type = "m.room.encrypted"
    else:
        # nio turns a decrypted payload that fails its schema (e.g. the spec's end-of-candidates
        # `{"candidate": ""}`) into a BadEvent without the `decrypted` flag; Megolm plaintext names
        # its room_id, events from /sync do not, which tells the two apart.
        decrypted = bool(getattr(event, "decrypted", False)) or (
            isinstance(event, (BadEvent, UnknownBadEvent)) and "room_id" in source
        )
        encrypted = decrypted
        content = dict(source.get("content") or {})
        event_type = str(source.get("type", ""))
    body = content.get("body") if not isinstance(event, MegolmEvent) else None
    return MessageView(
        event_id=str(source.get("event_id", getattr(event, "event_id", ""))),
        sender=str(source.get("sender", getattr(event, "sender", ""))),
        body=body if isinstance(body, str) else None,
        content=content,
        encrypted=encrypted,
        decrypted=decrypted,
        origin_server_ts=int(source.get("origin_server_ts", 0) or 0),
        type=event_type,
    )


def _check(response: object, what: str) -> Any:
    if isinstance(response, ErrorResponse):
        raise MatrixUserError(f"{what}: {response.status_code} {response.message}")
    return response


@dataclass
class _RoomLog:
    """Buffered timeline of one room: views in arrival order, plus still-encrypted originals."""

    views: list[MessageView] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    undecrypted: dict[str, MegolmEvent] = field(default_factory=dict)

    def add(self, view: MessageView, original: Event) -> None:
        if view.event_id in self.index:
            return
        self.index[view.event_id] = len(self.views)
        self.views.append(view)
        if isinstance(original, MegolmEvent):
            self.undecrypted[view.event_id] = original

    def replace(self, view: MessageView) -> None:
        self.views[self.index[view.event_id]] = view
        self.undecrypted.pop(view.event_id, None)


class MatrixUser:
    """A logged-in nio client with E2EE, a background sync loop and awaitable views of what arrives."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._rooms: dict[str, _RoomLog] = {}
        self._membership: dict[tuple[str, str], str] = {}
        self._changed = asyncio.Condition()
        self._keys_lock = asyncio.Lock()
        self._sync_task: asyncio.Task[None] | None = None

    # -- construction ------------------------------------------------------------------------------

    @staticmethod
    def _client(base_url: str, user_id: str, store_dir: Path, device_id: str | None = None) -> AsyncClient:
        store_dir.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(store=SqliteStore, store_sync_tokens=True, encryption_enabled=True)
        return AsyncClient(base_url, user_id, device_id=device_id, store_path=str(store_dir), config=config)

    @classmethod
    async def login(
        cls, base_url: str, user_id: str, password: str, store_dir: Path, device_name: str = "test"
    ) -> MatrixUser:
        """Log in as a new device, upload its keys, do the first sync and start syncing."""
        client = cls._client(base_url, user_id, Path(store_dir))
        try:
            _check(await client.login(password, device_name=device_name), f"login {user_id}")
            user = cls(client)
            await user._start()
        except BaseException:
            await client.close()
            raise
        return user

    @classmethod
    async def restore(
        cls, base_url: str, user_id: str, device_id: str, access_token: str, store_dir: Path
    ) -> MatrixUser:
        """Resume an existing device (keys and sessions from `store_dir`) and start syncing."""
        # nio would silently make a fresh Olm account for a missing store: a second identity for
        # an existing device, which the homeserver then refuses. Refuse it here instead.
        if not (Path(store_dir) / f"{user_id}_{device_id}.db").exists():
            raise MatrixUserError(f"no E2EE store for {user_id}/{device_id} in {store_dir}")
        client = cls._client(base_url, user_id, Path(store_dir), device_id)
        try:
            client.restore_login(user_id, device_id, access_token)
            user = cls(client)
            await user._start()
        except BaseException:
            await client.close()
            raise
        return user

    async def _start(self) -> None:
        await self._key_maintenance()
        await self._sync_once(full_state=True)
        await self._key_maintenance()
        self._sync_task = asyncio.create_task(self._sync_loop(), name=f"sync {self.user_id}")

    async def close(self) -> None:
        """Stop the sync loop (cancelled and awaited) and close the HTTP session."""
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("sync loop of %s had failed", self.user_id)
        await self.client.close()

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @property
    def access_token(self) -> str:
        return str(self.client.access_token)

    # -- sync --------------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync_once(full_state=False)
                await self._key_maintenance()
            except asyncio.CancelledError:
                raise
            except (MatrixUserError, aiohttp.ClientError, TimeoutError) as error:
                # Transient (homeserver restarting, overloaded): retry; anything else ends the loop
                # and is raised to whoever waits on this user.
                log.warning("%s: sync failed (%r); retrying in 1s", self.user_id, error)
                await asyncio.sleep(1)

    async def _sync_once(self, full_state: bool) -> None:
        response = await self.client.sync(
            timeout=0 if full_state else SYNC_TIMEOUT_MS, full_state=full_state or None
        )
        if not isinstance(response, SyncResponse):
            raise MatrixUserError(f"sync: {response}")
        self._absorb(response)
        async with self._changed:
            self._changed.notify_all()

    async def _key_maintenance(self) -> None:
        """Everything nio's sync_forever does between syncs: key upload/query/claim, to-device."""
        client = self.client
        async with self._keys_lock:
            if client.outgoing_to_device_messages:
                await client.send_to_device_messages()
            if client.should_upload_keys:
                _check(await client.keys_upload(), "keys_upload")
            if client.should_query_keys:
                _check(await client.keys_query(), "keys_query")
            if client.should_claim_keys:
                _check(await client.keys_claim(client.get_users_for_key_claiming()), "keys_claim")

    def _absorb(self, response: SyncResponse) -> None:
        """Record memberships and timeline events of one (already decrypted-by-nio) sync response."""
        me = self.user_id
        for room_id, invite in response.rooms.invite.items():
            for event in invite.invite_state:
                if isinstance(event, InviteMemberEvent):
                    self._membership[(room_id, event.state_key)] = event.membership
        for room_id, info in response.rooms.join.items():
            self._membership[(room_id, me)] = "join"
            room_log = self._rooms.setdefault(room_id, _RoomLog())
            for event in [*info.state, *info.timeline.events]:
                if isinstance(event, RoomMemberEvent):
                    self._membership[(room_id, event.state_key)] = event.membership
                view = message_view(event)
                if view is not None:
                    room_log.add(view, event)
        for room_id, info in response.rooms.leave.items():
            self._membership[(room_id, me)] = "leave"
            for event in info.timeline.events:
                if isinstance(event, RoomMemberEvent):
                    self._membership[(room_id, event.state_key)] = event.membership
        self._retry_decryption()

    def _retry_decryption(self) -> None:
        for room_id, room_log in self._rooms.items():
            for event_id, event in list(room_log.undecrypted.items()):
                event.room_id = room_id
                try:
                    decrypted = self.client.decrypt_event(event)
                except EncryptionError:
                    continue
                view = message_view(decrypted)
                if view is not None and not isinstance(decrypted, MegolmEvent):
                    room_log.replace(view)
                    log.info("%s: late decryption of %s", self.user_id, event_id)

    async def _wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until `check()` returns something truthy (re-checked after every sync)."""
        result: Any = None

        def ready() -> bool:
            nonlocal result
            result = check()
            return bool(result) or (self._sync_task is not None and self._sync_task.done())

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.user_id}: timed out after {timeout}s waiting for {what}") from None
        if not result and self._sync_task is not None and self._sync_task.done():
            error = None if self._sync_task.cancelled() else self._sync_task.exception()
            raise MatrixUserError(f"{self.user_id}: sync loop stopped: {error!r}")
        return result

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_for_message(
        self,
        room_id: str,
        predicate: Callable[[MessageView], bool],
        timeout: float = 30,
    ) -> MessageView:
        """The first buffered or future timeline event of the room that satisfies `predicate`."""

        def find() -> MessageView | None:
            room_log = self._rooms.get(room_id)
            if room_log is None:
                return None
            return next((view for view in room_log.views if predicate(view)), None)

        view: MessageView = await self._wait(find, timeout, f"a message in {room_id}")
        return view

    def messages(self, room_id: str) -> list[MessageView]:
        """Everything buffered for the room so far, in arrival order."""
        room_log = self._rooms.get(room_id)
        return list(room_log.views) if room_log else []

    def membership(self, room_id: str, user_id: str) -> str | None:
        return self._membership.get((room_id, user_id))

    async def wait_for_membership(
        self,
        room_id: str,
        user_id: str,
        membership: str,
        timeout: float = 30,
    ) -> None:
        """Wait until this user's view of the room shows `user_id` with `membership`."""
        await self._wait(
            lambda: self._membership.get((room_id, user_id)) == membership,
            timeout,
            f"{user_id} {membership} in {room_id}",
        )

    def knows_device(self, user_id: str, device_id: str) -> bool:
        """Whether this client has fetched the keys of that device (so it will encrypt to it)."""
        olm = self.client.olm
        if olm is None:
            return False
        return any(device.id == device_id for device in olm.device_store.active_user_devices(user_id))

    async def wait_for_device(self, user_id: str, device_id: str, timeout: float = 30) -> None:
        """Wait until a (new) device of `user_id` is known, as Element shows a new session."""
        await self._wait(lambda: self.knows_device(user_id, device_id), timeout, f"device {device_id}")

    async def _wait_joined(self, room_id: str, encrypted: bool, timeout: float = 30) -> None:
        """Wait until nio knows the room (and that it is encrypted), so room_send can use it."""

        def known() -> bool:
            room = self.client.rooms.get(room_id)
            return room is not None and (room.encrypted or not encrypted)

        await self._wait(known, timeout, f"room {room_id} in sync")

    # -- actions -----------------------------------------------------------------------------------

    async def create_room(
        self, name: str, invite: Sequence[str] = (), encrypted: bool = True, direct: bool = False
    ) -> str:
        """Create a private room (encrypted by default), invite people, and wait until it is synced."""
        initial_state = []
        if encrypted:
            initial_state.append(
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
            )
        response = await self.client.room_create(
            name=name,
            invite=list(invite),
            initial_state=initial_state,
            is_direct=direct,
            preset=RoomPreset.trusted_private_chat if direct else RoomPreset.private_chat,
        )
        room_id = str(_check(response, f"create room {name!r}").room_id)
        await self._wait_joined(room_id, encrypted)
        return room_id

    async def join(self, room_id: str, via: str | None = None) -> None:
        """Join (after an invite) and wait until the room shows up in sync. ``via``: a server in the
        room to join through (a room of another homeserver: Synapse does not always find the inviter's
        server by itself right after the invite, "no servers that are in the room have been provided")."""
        if via is None:
            response = _check(await self.client.join(room_id), f"join {room_id}")
        else:
            path = Api._build_path(["join", room_id], {"access_token": self.access_token, "server_name": via})
            response = _check(await self.client._send(JoinResponse, "POST", path, "{}"), f"join {room_id}")
        # The sync that shows the join also carries the room's state (encryption included).
        await self._wait_joined(str(response.room_id), encrypted=False)

    async def invite(self, room_id: str, user_id: str) -> None:
        _check(await self.client.room_invite(room_id, user_id), f"invite {user_id} to {room_id}")

    async def kick(self, room_id: str, user_id: str, reason: str = "") -> None:
        _check(await self.client.room_kick(room_id, user_id, reason or None), f"kick {user_id}")

    async def send_text(self, room_id: str, body: str, msgtype: str = "m.text") -> str:
        """Send a text message (Megolm-encrypted in encrypted rooms, to every device); its event ID."""
        return await self.send_event(room_id, "m.room.message", {"msgtype": msgtype, "body": body})

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any room event; encrypted rooms get it encrypted and shared with all known devices."""
        await self._wait(lambda: room_id in self.client.rooms, 30, f"room {room_id} in sync")
        await self._key_maintenance()
        response = await self.client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
        return str(_check(response, f"send to {room_id}").event_id)

    async def set_power_level(self, room_id: str, user_id: str, level: int) -> None:
        current = _check(
            await self.client.room_get_state_event(room_id, "m.room.power_levels"), "get power levels"
        )
        content = dict(current.content)
        content["users"] = {**content.get("users", {}), user_id: level}
        _check(await self.client.room_put_state(room_id, "m.room.power_levels", content), "set power levels")

    async def get_openid_token(self) -> dict[str, Any]:
        """An OpenID token (`access_token`, `expires_in`, `matrix_server_name`, `token_type`)."""
        response = _check(await self.client.get_openid_token(self.user_id), "get openid token")
        return {
            "access_token": response.access_token,
            "expires_in": response.expires_in,
            "matrix_server_name": response.matrix_server_name,
            "token_type": response.token_type,
        }
