"""Transactions: each processed once (also after re-opening the store), bad events skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from visio_matrix.appservice.events import RoomEvent, Transaction, parse_transaction_body
from visio_matrix.appservice.transactions import TransactionProcessor, transaction_key
from visio_matrix.clock import FakeClock
from visio_matrix.metrics import Metrics
from visio_matrix.storage import Store, open_store


class RecordingSink:
    def __init__(self, fail_on: str | None = None) -> None:
        self.seen: list[str] = []
        self.ephemeral: list[Transaction] = []
        self.fail_on = fail_on

    async def on_room_event(self, event: RoomEvent) -> None:
        if event.event_id == self.fail_on:
            raise RuntimeError("handler crashed")
        self.seen.append(event.event_id)

    async def on_ephemeral(self, txn: Transaction) -> None:
        self.ephemeral.append(txn)


def ev(n: int) -> dict[str, object]:
    return {
        "event_id": f"$e{n}",
        "room_id": "!r:hs",
        "sender": "@a:hs",
        "type": "m.room.message",
        "content": {"body": str(n)},
        "origin_server_ts": n,
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    await s.close()


def processor(store: Store, sink: RecordingSink) -> TransactionProcessor:
    return TransactionProcessor(store, sink, FakeClock(), Metrics(), "@visio:hs")


async def test_duplicate_transaction_takes_effect_once(store: Store) -> None:
    sink = RecordingSink()
    proc = processor(store, sink)
    txn = parse_transaction_body({"events": [ev(1), ev(2)]})
    await proc.on_transaction("t1", txn)
    await proc.on_transaction("t1", txn)
    assert sink.seen == ["$e1", "$e2"]


async def test_reused_transaction_id_with_a_new_body_is_processed(store: Store) -> None:
    """Synapse on SQLite numbers transactions from 1 again after a restart: same id, new events."""
    sink = RecordingSink()
    proc = processor(store, sink)
    await proc.on_transaction("1", parse_transaction_body({"events": [ev(1)]}))
    await proc.on_transaction("1", parse_transaction_body({"events": [ev(2)]}))
    await proc.on_transaction("1", parse_transaction_body({"events": [ev(2)]}))  # its retry
    to_device = {"events": [], "de.sorunome.msc2409.to_device": [{"type": "m.dummy"}]}
    await proc.on_transaction("1", parse_transaction_body(to_device))
    await proc.on_transaction("1", parse_transaction_body(to_device))
    assert sink.seen == ["$e1", "$e2"]
    assert len(sink.ephemeral) == 1


async def test_duplicate_transaction_after_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    txn = parse_transaction_body({"events": [ev(1)]})
    first = await open_store(url)
    sink1 = RecordingSink()
    await processor(first, sink1).on_transaction("t1", txn)
    await first.close()
    second = await open_store(url)
    sink2 = RecordingSink()
    await processor(second, sink2).on_transaction("t1", txn)
    # A new transaction repeating an already-handled event is not handled twice either.
    await processor(second, sink2).on_transaction("t2", parse_transaction_body({"events": [ev(1), ev(3)]}))
    await second.close()
    assert sink1.seen == ["$e1"]
    assert sink2.seen == ["$e3"]


async def test_bad_and_failing_events_do_not_stop_the_others(store: Store) -> None:
    sink = RecordingSink(fail_on="$e2")
    proc = processor(store, sink)
    txn = parse_transaction_body(
        {"events": [ev(1), "garbage", {"type": "x"}, ev(2), {**ev(4), "content": 1}, ev(3)]}
    )
    await proc.on_transaction("t1", txn)
    assert sink.seen == ["$e1", "$e3"]
    assert await store.is_transaction_done(transaction_key("t1", txn))


async def test_ephemeral_data_is_passed_on(store: Store) -> None:
    sink = RecordingSink()
    txn = parse_transaction_body({"events": [], "de.sorunome.msc2409.to_device": [{"type": "m.dummy"}]})
    await processor(store, sink).on_transaction("t9", txn)
    assert len(sink.ephemeral) == 1
    assert sink.ephemeral[0].to_device == ({"type": "m.dummy"},)


async def test_housekeeping_prunes_only_old_ids(store: Store) -> None:
    from visio_matrix.housekeeping import Housekeeping

    clock = FakeClock()
    proc = TransactionProcessor(store, RecordingSink(), clock, Metrics(), "@visio:hs")
    old = parse_transaction_body({"events": [ev(1)]})
    await proc.on_transaction("old", old)
    clock.advance(3 * 86400)
    new = parse_transaction_body({"events": [ev(2)]})
    await proc.on_transaction("new", new)
    clock.advance(5 * 86400)  # "old" is 8 days old, "new" 5 days
    removed = await Housekeeping(store, clock).run_once()
    assert removed == 2  # one transaction id and one event id
    assert not await store.is_transaction_done(transaction_key("old", old))
    assert await store.is_transaction_done(transaction_key("new", new))
    assert await store.claim_event("$e1", clock.wall_ms())  # forgotten, claimable again
    assert not await store.claim_event("$e2", clock.wall_ms())
