"""Processing of appservice transactions: each transaction once, each event once, bad events skipped.

A transaction ID is recorded as done only after all its events were handled, and every event ID
is claimed in storage before it is handled, so a homeserver retry (same txnId, same body), also
after a restart of the service, has no effect twice. One bad event is logged and skipped; the
others in the batch are still processed.

"Done" is recorded per txnId AND body digest: Synapse on SQLite numbers transactions again from 1
after it restarts (its id generator starts from the pending transactions, none once all are
delivered), so a known txnId with a new body is a new transaction, not a retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Protocol

from visio_matrix.appservice.events import BadEvent, RoomEvent, Transaction, parse_room_event
from visio_matrix.clock import Clock
from visio_matrix.metrics import Metrics

log = logging.getLogger(__name__)


def transaction_key(txn_id: str, txn: Transaction) -> str:
    """What is recorded as done: the txnId plus a digest of the body (a retry repeats both)."""
    body = [txn.events, txn.ephemeral, txn.to_device, txn.device_lists, txn.otk_counts]
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()
    return f"{txn_id}:{digest[:16]}"


class TransactionStore(Protocol):
    async def is_transaction_done(self, txn_id: str) -> bool: ...

    async def mark_transaction_done(self, txn_id: str, now_ms: int) -> None: ...

    async def claim_event(self, event_id: str, now_ms: int) -> bool: ...


class EventSink(Protocol):
    async def on_room_event(self, event: RoomEvent) -> None: ...

    async def on_ephemeral(self, txn: Transaction) -> None:
        """MSC2409/MSC3202 data (to-device, device lists, key counts) when the homeserver sends it."""
        ...


class TransactionProcessor:
    def __init__(
        self,
        store: TransactionStore,
        sink: EventSink,
        clock: Clock,
        metrics: Metrics,
        bot_user_id: str,
    ) -> None:
        self._store = store
        self._sink = sink
        self._clock = clock
        self._metrics = metrics
        self._bot_user_id = bot_user_id
        # Homeservers send one transaction at a time, but a retry may overlap a slow first attempt.
        self._lock = asyncio.Lock()

    async def on_transaction(self, txn_id: str, txn: Transaction) -> None:
        key = transaction_key(txn_id, txn)
        async with self._lock:
            if await self._store.is_transaction_done(key):
                self._metrics.transactions.labels(outcome="duplicate").inc()
                log.info("transaction %s already processed: ignored", txn_id)
                return
            for raw in txn.events:
                await self._process_one(raw)
            if txn.to_device or txn.device_lists or txn.otk_counts or txn.ephemeral:
                try:
                    await self._sink.on_ephemeral(txn)
                except Exception:
                    log.exception("error while handling ephemeral data of transaction %s", txn_id)
            await self._store.mark_transaction_done(key, self._clock.wall_ms())
            self._metrics.transactions.labels(outcome="processed").inc()

    async def _process_one(self, raw: object) -> None:
        event = parse_room_event(raw)
        if isinstance(event, BadEvent):
            self._metrics.events.labels(outcome="bad").inc()
            log.warning("skipping malformed event %s: %s", event.event_id or "<no id>", event.reason)
            return
        if not await self._store.claim_event(event.event_id, self._clock.wall_ms()):
            self._metrics.events.labels(outcome="duplicate").inc()
            return
        try:
            await self._sink.on_room_event(event)
        except Exception:
            self._metrics.events.labels(outcome="failed").inc()
            log.exception(
                "error while handling event %s (%s) in %s", event.event_id, event.type, event.room_id
            )
        else:
            self._metrics.events.labels(outcome="processed").inc()

    async def user_exists(self, user_id: str) -> bool:
        # Only the bot exists today; virtual users (SIP callers, guests) come with their issues.
        return user_id == self._bot_user_id

    async def alias_exists(self, alias: str) -> bool:
        return False

    async def on_ping(self, transaction_id: str | None) -> None:
        log.info("homeserver pinged the appservice (transaction_id=%s)", transaction_id)
