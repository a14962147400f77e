"""Olm-encrypted to-device messages of any type, with a verified sender, on any matrix-nio client.

matrix-nio 0.26 decrypts Olm to-device events but keeps only the types it uses itself (m.room_key,
m.forwarded_room_key, m.dummy), and has no API to send an Olm-encrypted to-device message of another
type. Call signaling (``m.call.*``, ``io.element.call.encryption_keys``) needs both, so
`SecureToDeviceChannel` adds them to an ``AsyncClient`` with encryption enabled (the bot's
``AppserviceAsyncClient`` as well as a plain logged-in user client)::

    receive: /sync -> AsyncClient._handle_to_device -> Olm.handle_to_device_event -> Olm.decrypt_event
             -> Olm.decrypt: Olm ratchet, payload schema, _verify_olm_payload (sender = envelope sender,
                recipient = us, recipient_keys.ed25519 = our key)
             -> Olm._handle_olm_event   <-- hooked here: nio's own types go on to nio, unchanged;
                the others become `SecureToDevice` values in a bounded queue, in arrival order.
             Unencrypted to-device events of the same types become `PlainToDevice` values in a
             separate queue, so they can be refused: they never pass for encrypted ones.
    send:    /keys/query (device unknown) -> /keys/claim (no Olm session) -> Olm._olm_encrypt
             -> PUT /sendToDevice/m.room.encrypted/{txnId} (one request for many devices)

A message's sender device is known ("verified") when nio's device store, filled from /keys/query
where nio checks each device's self-signature, holds a device of the sender whose curve25519 key is
the Olm session's (proven by the decryption) and whose ed25519 key is the one the payload claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
from nio import AsyncClient, ErrorResponse, ToDeviceMessage, UnknownToDeviceEvent

from visio_matrix.tasks import TaskOwner

log = logging.getLogger(__name__)

# Decrypted Olm payload types matrix-nio handles itself (Olm._handle_olm_event): never captured.
NIO_OLM_TYPES = frozenset({"m.room_key", "m.forwarded_room_key", "m.dummy"})
QUEUE_SIZE = 1000
# Devices per PUT /sendToDevice: keeps request bodies small (a few kB of ciphertext per device).
DEVICES_PER_REQUEST = 100

T = TypeVar("T")


class ToDeviceError(Exception):
    """A to-device message could not be sent (unknown device, no keys, no one-time key, HTTP error)."""


@dataclass(frozen=True)
class SecureToDevice:
    """A decrypted Olm to-device event."""

    type: str
    content: dict[str, Any]
    # The envelope sender; nio checked it equals the sender inside the Olm payload.
    sender: str
    # The curve25519 key of the Olm session the event came through.
    sender_key: str
    # The sender's device whose published keys match both sender_key and sender_ed25519 (None: no
    # such device in the device store, or the payload named another device).
    sender_device: str | None
    # What the payload claims ("keys.ed25519", "sender_device"); kept to re-check the sender later.
    sender_ed25519: str = ""
    claimed_device: str | None = None

    @property
    def verified(self) -> bool:
        return self.sender_device is not None


@dataclass(frozen=True)
class PlainToDevice:
    """An unencrypted to-device event of a captured type: anyone (the homeserver too) could have made it."""

    type: str
    content: dict[str, Any]
    sender: str


@dataclass(frozen=True)
class OutgoingToDevice:
    """One message for one device; `ValueError` on construction when a field is unusable."""

    user_id: str
    device_id: str
    type: str
    content: dict[str, Any] = field(hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id.startswith("@") or ":" not in self.user_id:
            raise ValueError(f"user_id must be a Matrix user ID, got {self.user_id!r}")
        if not isinstance(self.device_id, str) or not self.device_id or self.device_id == "*":
            raise ValueError(f"device_id must name one device, got {self.device_id!r}")
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"event type must be a non-empty string, got {self.type!r}")
        if not isinstance(self.content, dict):
            raise ValueError(f"content must be a JSON object, got {type(self.content).__name__}")
        try:
            json.dumps(self.content)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"content is not JSON-serializable: {exc}") from None


class DeviceKeys(Protocol):
    """What this module reads of nio's `OlmDevice`."""

    @property
    def device_id(self) -> str: ...

    @property
    def ed25519(self) -> str: ...

    @property
    def curve25519(self) -> str: ...


def find_sender_device(
    devices: Iterable[DeviceKeys], sender_key: str, ed25519: str, claimed_device: str | None
) -> str | None:
    """The device with both keys, or None; also None when the payload names a different device."""
    if not sender_key or not ed25519:
        return None
    for device in devices:
        if device.curve25519 == sender_key and device.ed25519 == ed25519:
            if claimed_device is not None and claimed_device != device.device_id:
                log.warning(
                    "Olm payload names device %s but its keys are those of device %s",
                    claimed_device,
                    device.device_id,
                )
                return None
            return device.device_id
    return None


def secure_message(
    sender: str, sender_key: str, payload: Mapping[str, Any], devices: Iterable[DeviceKeys]
) -> SecureToDevice:
    """The message of a decrypted, nio-verified Olm payload; `ValueError` if it is unusable."""
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"payload type is not a string: {event_type!r}")
    content = payload.get("content")
    if not isinstance(content, dict):
        raise ValueError(f"{event_type} content is not an object ({type(content).__name__})")
    keys = payload.get("keys")
    ed25519 = keys.get("ed25519") if isinstance(keys, dict) else None
    ed25519 = ed25519 if isinstance(ed25519, str) else ""
    claimed = payload.get("sender_device")
    claimed = claimed if isinstance(claimed, str) else None
    return SecureToDevice(
        type=event_type,
        content=content,
        sender=sender,
        sender_key=sender_key,
        sender_device=find_sender_device(devices, sender_key, ed25519, claimed),
        sender_ed25519=ed25519,
        claimed_device=claimed,
    )


class _Inbox(Generic[T]):
    """A bounded FIFO: drop-oldest (counted) when full; optionally drained into async handlers."""

    def __init__(self, name: str, size: int, tasks: TaskOwner) -> None:
        self.name = name
        self.queue: asyncio.Queue[T] = asyncio.Queue(size)
        self.dropped = 0
        self._handlers: list[Callable[[T], Awaitable[None]]] = []
        self._tasks = tasks

    def put(self, item: T) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("%s queue full: dropped the oldest message (%d so far)", self.name, self.dropped)
        self.queue.put_nowait(item)

    def add_handler(self, handler: Callable[[T], Awaitable[None]]) -> None:
        self._handlers.append(handler)
        if len(self._handlers) == 1:
            self._tasks.spawn(self._dispatch(), f"{self.name} handlers")

    async def _dispatch(self) -> None:
        # One task, handlers awaited one message at a time: arrival order is kept, and a slow handler
        # delays only later messages (the queue absorbs them), never nio's /sync processing.
        while True:
            item = await self.queue.get()
            for handler in list(self._handlers):
                try:
                    await handler(item)
                except Exception:
                    log.exception("%s handler failed", self.name)


class Unreachable(Enum):
    """Why a device cannot get an encrypted message now."""

    UNKNOWN_DEVICE = "unknown device (no published keys)"
    BLACKLISTED = "device is blacklisted"
    NO_SESSION = "no Olm session (no one-time key could be claimed)"


class _ManyDevices(ToDeviceMessage):
    """A ToDeviceMessage for many recipients at once: `content` is the whole user -> device -> body map.

    nio's `to_device()` sends `message.as_dict()`; its ToDeviceMessage holds a single recipient.
    """

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.content}


class SecureToDeviceChannel:
    """Olm to-device messages of any type to and from the devices of a nio client.

    Call `install()` once the client has its Olm machine (`client.olm`, made by `login()` or
    `restore_login()` loading the store) and before its first /sync: to-device events of that sync
    would otherwise be dropped by nio. Received messages go to `messages` (bounded, drop-oldest,
    `dropped` counts losses) unless handlers are added with `add_handler`, which then receive them
    instead, in order, from one task this channel owns (stop it with `close()`).
    """

    def __init__(
        self, client: AsyncClient, *, types: Collection[str] | None = None, queue_size: int = QUEUE_SIZE
    ) -> None:
        self._types = frozenset(types) if types is not None else None
        if self._types is not None and self._types & NIO_OLM_TYPES:
            raise ValueError(f"nio handles {sorted(self._types & NIO_OLM_TYPES)} itself: do not capture them")
        self._client = client
        self._tasks = TaskOwner("to-device")
        self._secure: _Inbox[SecureToDevice] = _Inbox("encrypted to-device", queue_size, self._tasks)
        self._plain: _Inbox[PlainToDevice] = _Inbox("unencrypted to-device", queue_size, self._tasks)
        # nio creates one Olm session per /keys/claim response: claims for one device must not overlap.
        # Whoever else claims keys on this client (its sync loop) should hold this lock too.
        self.keys_lock = asyncio.Lock()
        # Held from encryption to the homeserver's reply, so messages leave in the order they were
        # encrypted (asyncio locks are FIFO: concurrent send() calls keep their call order).
        self._send_lock = asyncio.Lock()
        self._hooked_olm: Any = None
        self._plain_callback_added = False

    # ---- receiving ------------------------------------------------------------------------------

    @property
    def messages(self) -> asyncio.Queue[SecureToDevice]:
        return self._secure.queue

    @property
    def plain_messages(self) -> asyncio.Queue[PlainToDevice]:
        return self._plain.queue

    @property
    def dropped(self) -> int:
        return self._secure.dropped

    @property
    def plain_dropped(self) -> int:
        return self._plain.dropped

    def captures(self, event_type: str) -> bool:
        return event_type not in NIO_OLM_TYPES and (self._types is None or event_type in self._types)

    def install(self) -> None:
        """Hook into `client.olm` (again if nio replaced it); idempotent. `ToDeviceError` without Olm."""
        olm = self._client.olm
        if olm is None:
            raise ToDeviceError(
                "the client has no Olm machine: enable encryption and install after login()/restore_login()"
            )
        if self._hooked_olm is not olm:
            # An instance attribute shadows the method on this one Olm object only. nio calls it
            # after decrypting and verifying the payload (Olm.decrypt -> _verify_olm_payload), and
            # returning None makes nio hand the still-encrypted event to its to-device callbacks.
            nio_handle_olm_event = olm._handle_olm_event

            def handle_olm_event(sender: str, sender_key: str, payload: dict[str, Any]) -> Any:
                if not self.captures(str(payload.get("type"))):
                    return nio_handle_olm_event(sender, sender_key, payload)
                self._capture(sender, sender_key, payload)
                return None

            olm._handle_olm_event = handle_olm_event
            self._hooked_olm = olm
        if not self._plain_callback_added:
            self._client.add_to_device_callback(self._on_plain, UnknownToDeviceEvent)
            self._plain_callback_added = True

    def _capture(self, sender: str, sender_key: str, payload: dict[str, Any]) -> None:
        # Runs inside nio's /sync processing: an exception here would abort the rest of the response.
        try:
            message = secure_message(sender, sender_key, payload, self._devices(sender))
        except ValueError as exc:
            log.warning("dropped an encrypted to-device event from %s: %s", sender, exc)
            return
        except Exception:
            log.exception("dropped an encrypted to-device event from %s", sender)
            return
        log.debug("encrypted %s from %s/%s: %s", message.type, sender, message.sender_device, message.content)
        self._secure.put(message)

    async def _on_plain(self, event: UnknownToDeviceEvent) -> None:
        if not self.captures(event.type):
            return
        content = event.source.get("content")
        if not isinstance(content, dict):
            log.warning(
                "dropped an unencrypted %s from %s: content is not an object", event.type, event.sender
            )
            return
        log.info("unencrypted %s to-device event from %s", event.type, event.sender)
        self._plain.put(PlainToDevice(event.type, content, event.sender))

    def add_handler(self, handler: Callable[[SecureToDevice], Awaitable[None]]) -> None:
        """Deliver encrypted messages to `handler` (in order) instead of leaving them in `messages`."""
        self._secure.add_handler(handler)

    def add_plain_handler(self, handler: Callable[[PlainToDevice], Awaitable[None]]) -> None:
        """Deliver unencrypted messages to `handler` instead of leaving them in `plain_messages`."""
        self._plain.add_handler(handler)

    async def refresh_sender(self, message: SecureToDevice) -> SecureToDevice:
        """Query the sender's keys again and recompute `sender_device` (for a device that just appeared)."""
        await self._query_keys([message.sender])
        device = find_sender_device(
            self._devices(message.sender), message.sender_key, message.sender_ed25519, message.claimed_device
        )
        return replace(message, sender_device=device)

    async def close(self) -> None:
        """Stop the handler tasks. The hook stays: later messages still queue up."""
        await self._tasks.close()

    # ---- sending --------------------------------------------------------------------------------

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None:
        """Olm-encrypt `content` as `event_type` for one device and send it.

        `ValueError` for unusable arguments; `ToDeviceError` when the device does not exist, has no
        keys, has no one-time key left, or the homeserver refuses.
        """
        failures = await self.send_many([OutgoingToDevice(user_id, device_id, event_type, content)])
        if failures:
            raise ToDeviceError(
                f"cannot send {event_type} to {user_id}/{device_id}: {failures[user_id, device_id]}"
            )

    async def send_many(self, messages: Sequence[OutgoingToDevice]) -> dict[tuple[str, str], str]:
        """Olm-encrypt and send each message, with one key query, one key claim and as few PUTs as
        possible. Returns the devices that could not be reached, with the reason; raises `ToDeviceError`
        if a request fails. Messages to one device are sent in list order."""
        olm = self._olm()
        targets = {(m.user_id, m.device_id) for m in messages}
        reasons: dict[tuple[str, str], str] = {}
        needs_keys = (Unreachable.UNKNOWN_DEVICE, Unreachable.NO_SESSION)
        if any(self._recipient(olm, *t) in needs_keys for t in targets):
            async with self.keys_lock:
                reasons = await self._prepare_sessions(olm, targets)
        failures: dict[tuple[str, str], str] = {}
        async with self._send_lock:
            for batch in _batches(messages):
                bodies: defaultdict[str, dict[str, Any]] = defaultdict(dict)
                for m in batch:
                    recipient = self._recipient(olm, m.user_id, m.device_id)
                    if isinstance(recipient, Unreachable):
                        failures[m.user_id, m.device_id] = reasons.get(
                            (m.user_id, m.device_id), recipient.value
                        )
                        continue
                    device, session = recipient
                    bodies[m.user_id][m.device_id] = olm._olm_encrypt(session, device, m.type, m.content)
                    log.debug("encrypted %s for %s/%s: %s", m.type, m.user_id, m.device_id, m.content)
                if bodies:
                    await self._put(_ManyDevices("m.room.encrypted", "", "", dict(bodies)))
        return failures

    async def send_plain(
        self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]
    ) -> None:
        """Send an UNENCRYPTED to-device message (the homeserver reads it: never put secrets in it)."""
        m = OutgoingToDevice(user_id, device_id, event_type, content)
        await self._put(ToDeviceMessage(m.type, m.user_id, m.device_id, m.content))

    # ---- helpers --------------------------------------------------------------------------------

    def _olm(self) -> Any:
        olm = self._client.olm
        if olm is None:
            raise ToDeviceError("the client has no Olm machine (encryption disabled or not logged in)")
        return olm

    def _devices(self, user_id: str) -> list[DeviceKeys]:
        olm = self._client.olm
        return list(olm.device_store.active_user_devices(user_id)) if olm is not None else []

    @staticmethod
    def _recipient(olm: Any, user_id: str, device_id: str) -> tuple[Any, Any] | Unreachable:
        """(device, Olm session) ready for encryption, or why not."""
        devices = olm.device_store.active_user_devices(user_id)
        device = next((d for d in devices if d.device_id == device_id), None)
        if device is None:
            return Unreachable.UNKNOWN_DEVICE
        if device.blacklisted:
            return Unreachable.BLACKLISTED
        session = olm.session_store.get(device.curve25519)
        if session is None:
            return Unreachable.NO_SESSION
        return device, session

    async def _query_keys(self, users: Iterable[str]) -> None:
        # nio's keys_query() asks for every user in users_for_key_query; its response handler marks
        # them done and updates the device store (checking each device's signature).
        self._olm().users_for_key_query.update(users)
        await self._request("keys/query", self._client.keys_query())

    async def _prepare_sessions(
        self, olm: Any, targets: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Fetch unknown devices' keys and claim one-time keys where no session exists (keys_lock held)."""
        unknown = sorted({u for u, d in targets if self._recipient(olm, u, d) is Unreachable.UNKNOWN_DEVICE})
        if unknown:
            await self._query_keys(unknown)
        claims: defaultdict[str, list[str]] = defaultdict(list)
        for user_id, device_id in sorted(targets):
            if self._recipient(olm, user_id, device_id) is Unreachable.NO_SESSION:
                claims[user_id].append(device_id)
        reasons: dict[tuple[str, str], str] = {}
        if claims:
            response = await self._request("keys/claim", self._client.keys_claim(dict(claims)))
            # nio's response handler made an outbound session for each key it could verify.
            for user_id, device_ids in claims.items():
                for device_id in device_ids:
                    if device_id not in response.one_time_keys.get(user_id, {}):
                        reasons[user_id, device_id] = "no one-time key available for the device"
            if response.failures:
                log.warning("keys/claim could not reach servers: %s", sorted(response.failures))
        return reasons

    async def _put(self, message: ToDeviceMessage) -> None:
        await self._request(f"sendToDevice/{message.type}", self._client.to_device(message, uuid.uuid4().hex))

    @staticmethod
    async def _request(what: str, request: Awaitable[Any]) -> Any:
        """nio's response, or `ToDeviceError` for an error response or a transport failure."""
        try:
            response = await request
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ToDeviceError(f"{what} failed: {exc!r}") from exc
        if isinstance(response, ErrorResponse):
            raise ToDeviceError(f"{what} failed: {response.status_code} {response.message}")
        return response


def _batches(messages: Sequence[OutgoingToDevice]) -> Iterable[list[OutgoingToDevice]]:
    """Consecutive runs holding each device at most once and at most DEVICES_PER_REQUEST devices."""
    batch: list[OutgoingToDevice] = []
    seen: set[tuple[str, str]] = set()
    for m in messages:
        key = (m.user_id, m.device_id)
        if key in seen or len(batch) >= DEVICES_PER_REQUEST:
            yield batch
            batch, seen = [], set()
        batch.append(m)
        seen.add(key)
    if batch:
        yield batch
