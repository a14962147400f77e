"""The store suite: the same cases on SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest

from visio_matrix.storage import (
    CODE_VERSION,
    MIGRATIONS,
    ConferenceExistsError,
    Migration,
    MigrationError,
    SchemaTooNewError,
    Store,
    StoreError,
    UniqueViolationError,
    connect_database,
    open_store,
)
from visio_matrix.storage.migrations import schema_version

TABLES = ("schema_version", "appservice_txn", "processed_event", "kv_state", "conference")


async def _versions(url: str) -> list[tuple[int, str]]:
    db = await connect_database(url)
    try:
        rows = await db.fetch("SELECT version, description FROM schema_version ORDER BY version")
    finally:
        await db.close()
    return [(int(r["version"]), r["description"]) for r in rows]


# -- migrations


async def test_migrations_from_empty(store_url: str) -> None:
    db = await connect_database(store_url)
    try:
        with pytest.raises(StoreError):
            await db.fetch("SELECT * FROM conference")
    finally:
        await db.close()

    store = await open_store(store_url)
    await store.close()

    assert await _versions(store_url) == [(m.version, m.description) for m in MIGRATIONS]
    db = await connect_database(store_url)
    try:
        for table in TABLES:
            assert await db.fetch(f"SELECT * FROM {table} WHERE 1 = 0") == []
    finally:
        await db.close()


async def test_reopen_is_idempotent(store_url: str) -> None:
    first = await open_store(store_url)
    await first.set_state("k", "v")
    await first.close()
    versions = await _versions(store_url)

    second = await open_store(store_url)
    try:
        assert await second.get_state("k") == "v"
    finally:
        await second.close()
    assert await _versions(store_url) == versions
    assert versions[-1][0] == CODE_VERSION


async def test_database_newer_than_code_is_refused(store_url: str) -> None:
    newer = (
        *MIGRATIONS,
        Migration(CODE_VERSION + 1, "from the future", ("CREATE TABLE future (x INTEGER)",)),
    )
    store = await open_store(store_url, migrations=newer)
    await store.close()

    with pytest.raises(SchemaTooNewError) as caught:
        await open_store(store_url)
    assert caught.value.db_version == CODE_VERSION + 1
    assert caught.value.code_version == CODE_VERSION
    assert f"version {CODE_VERSION + 1} > code version {CODE_VERSION}" in str(caught.value)
    # Refused means untouched.
    assert (await _versions(store_url))[-1] == (CODE_VERSION + 1, "from the future")


async def test_failing_step_is_rolled_back_entirely(store_url: str) -> None:
    bad = Migration(
        CODE_VERSION + 1,
        "half of it works",
        (
            "CREATE TABLE half_done (x INTEGER)",
            "INSERT INTO half_done (x) VALUES (1)",
            "INSERT INTO no_such_table (x) VALUES (1)",
        ),
    )
    with pytest.raises(MigrationError) as caught:
        await open_store(store_url, migrations=(*MIGRATIONS, bad))
    assert caught.value.version == CODE_VERSION + 1
    assert caught.value.applied_version == CODE_VERSION

    # The earlier steps stay applied; nothing of the failed one remains.
    db = await connect_database(store_url)
    try:
        assert await schema_version(db) == CODE_VERSION
        with pytest.raises(StoreError):
            await db.fetch("SELECT x FROM half_done")
    finally:
        await db.close()
    # And the database is still usable by this code.
    store = await open_store(store_url)
    await store.close()


async def test_failing_first_step_leaves_version_zero(store_url: str) -> None:
    bad = Migration(1, "broken", ("CREATE TABLE t1 (x INTEGER)", "CREATE TABLE t1 (x INTEGER)"))
    with pytest.raises(MigrationError):
        await open_store(store_url, migrations=(bad,))
    db = await connect_database(store_url)
    try:
        assert await schema_version(db) == 0
        with pytest.raises(StoreError):
            await db.fetch("SELECT x FROM t1")
    finally:
        await db.close()


# -- transactions and events


async def test_transaction_done_once_across_reopen(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        assert not await store.is_transaction_done("txn-1")
        await store.mark_transaction_done("txn-1", now_ms=1000)
        await store.mark_transaction_done("txn-1", now_ms=2000)  # idempotent
        assert await store.is_transaction_done("txn-1")
        assert not await store.is_transaction_done("txn-2")
    finally:
        await store.close()

    reopened = await open_store(store_url)
    try:
        assert await reopened.is_transaction_done("txn-1")
        assert not await reopened.is_transaction_done("txn-2")
    finally:
        await reopened.close()


async def test_claim_event_concurrently_exactly_once(store_url: str) -> None:
    # Two stores (two connections / pools) on one database: the database decides, not an asyncio lock.
    a = await open_store(store_url)
    b = await open_store(store_url)
    try:
        claims = [(a if i % 2 else b).claim_event("$event", now_ms=i) for i in range(20)]
        results = await asyncio.gather(*claims)
        assert results.count(True) == 1
        assert results.count(False) == 19
        assert not await a.claim_event("$event", now_ms=99)
        assert await b.claim_event("$other", now_ms=99)
    finally:
        await a.close()
        await b.close()


async def test_prune_forgets_old_ids_only(store: Store) -> None:
    await store.mark_transaction_done("old", now_ms=100)
    await store.mark_transaction_done("new", now_ms=300)
    assert await store.claim_event("$old", now_ms=100)
    assert await store.claim_event("$new", now_ms=300)

    assert await store.prune(older_than_ms=200) == 2
    assert not await store.is_transaction_done("old")
    assert await store.is_transaction_done("new")
    assert await store.claim_event("$old", now_ms=400)  # forgotten, so claimable again
    assert not await store.claim_event("$new", now_ms=400)
    assert await store.prune(older_than_ms=200) == 0


# -- key/value state


async def test_state_get_set_overwrite_delete(store: Store) -> None:
    assert await store.get_state("sync_token") is None
    await store.set_state("sync_token", "s1")
    await store.set_state("device_id", "DEV")
    assert await store.get_state("sync_token") == "s1"
    await store.set_state("sync_token", "s2")
    assert await store.get_state("sync_token") == "s2"
    assert await store.get_state("device_id") == "DEV"
    assert await store.delete_state("sync_token")
    assert not await store.delete_state("sync_token")
    assert await store.get_state("sync_token") is None


# -- conferences


async def test_one_active_conference_per_room(store: Store) -> None:
    first = await store.create_conference("!a:hs", "@alice:hs", now_ms=1000)
    assert first.active and first.room_id == "!a:hs" and first.started_by == "@alice:hs"
    assert first.started_at_ms == 1000 and first.ended_by is None and first.state_event_id is None
    assert await store.get_active_conference("!a:hs") == first
    assert await store.get_conference(first.conference_id) == first

    with pytest.raises(ConferenceExistsError) as caught:
        await store.create_conference("!a:hs", "@bob:hs", now_ms=1001)
    assert caught.value.conference_id == first.conference_id
    other_room = await store.create_conference("!b:hs", "@bob:hs", now_ms=1002)
    assert other_room.conference_id != first.conference_id

    assert await store.end_conference(first.conference_id, "@alice:hs", now_ms=2000) is not None
    assert await store.get_active_conference("!a:hs") is None
    again = await store.create_conference("!a:hs", "@bob:hs", now_ms=3000)
    assert again.conference_id != first.conference_id
    assert await store.get_active_conference("!a:hs") == again


async def test_concurrent_starts_in_one_room_yield_one_conference(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_conference("!race:hs", f"@u{i}:hs", now_ms=i) for i in range(10)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    assert len(created) == 1
    assert all(isinstance(r, ConferenceExistsError) for r in results if isinstance(r, BaseException))
    assert await store.list_active_conferences() == created


async def test_database_enforces_one_active_conference(store_url: str, store: Store) -> None:
    await store.create_conference("!a:hs", "@alice:hs", now_ms=1)
    db = await connect_database(store_url)
    try:
        with pytest.raises(UniqueViolationError):
            await db.execute(
                "INSERT INTO conference (conference_id, room_id, started_by, started_at_ms) "
                "VALUES ('bypass', '!a:hs', '@mallory:hs', 2)"
            )
        # Ended conferences do not count.
        await db.execute(
            "INSERT INTO conference "
            "(conference_id, room_id, started_by, started_at_ms, ended_at_ms, ended_by) "
            "VALUES ('old', '!a:hs', '@alice:hs', 0, 1, '@alice:hs')"
        )
    finally:
        await db.close()


async def test_end_twice(store: Store) -> None:
    conf = await store.create_conference("!a:hs", "@alice:hs", now_ms=1000)
    ended = await store.end_conference(conf.conference_id, "@bob:hs", now_ms=5000)
    assert ended is not None
    assert ended.conference_id == conf.conference_id
    assert (ended.ended_at_ms, ended.ended_by, ended.active) == (5000, "@bob:hs", False)
    assert ended.started_at_ms == 1000

    assert await store.end_conference(conf.conference_id, "@carol:hs", now_ms=6000) is None
    assert await store.get_conference(conf.conference_id) == ended  # the first end stands
    assert await store.end_conference("no-such-id", "@bob:hs", now_ms=6000) is None


async def test_list_active_conferences(store: Store) -> None:
    assert await store.list_active_conferences() == []
    c = await store.create_conference("!c:hs", "@u:hs", now_ms=30)
    a = await store.create_conference("!a:hs", "@u:hs", now_ms=10)
    b = await store.create_conference("!b:hs", "@u:hs", now_ms=20)
    await store.end_conference(b.conference_id, "@u:hs", now_ms=40)
    assert await store.list_active_conferences() == [a, c]


async def test_conference_state_event(store: Store) -> None:
    conf = await store.create_conference("!a:hs", "@alice:hs", now_ms=1)
    await store.set_conference_state_event(conf.conference_id, "$msg1")
    fetched = await store.get_conference(conf.conference_id)
    assert fetched is not None and fetched.state_event_id == "$msg1"
    await store.set_conference_state_event(conf.conference_id, "$msg2")
    active = await store.get_active_conference("!a:hs")
    assert active is not None and active.state_event_id == "$msg2"


# -- health


async def test_ping_then_closed(store_url: str) -> None:
    store = await open_store(store_url)
    await store.ping()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


async def test_participants_join_leave_and_listing(store: Store) -> None:
    record = await store.create_conference("!room:hs", "@alice:hs", 1000)
    other = await store.create_conference("!other:hs", "@bob:hs", 1000)
    await store.add_participant(
        "PA_b", record.conference_id, "@bob:hs", "BOBDEV", "todevice", {"call_id": "c2"}, 2000
    )
    await store.add_participant(
        "PA_a", record.conference_id, "@alice:hs", "ALDEV", "todevice", {"call_id": "c1"}, 1500
    )
    await store.add_participant("PA_x", other.conference_id, "@bob:hs", "BOBDEV", "dm", {}, 1600)
    everyone = await store.list_participants(record.conference_id)
    assert [p.participant_id for p in everyone] == ["PA_a", "PA_b"]  # join order, own conference only
    assert everyone[0].transport_data == {"call_id": "c1"}
    assert everyone[0].left_at_ms is None

    assert await store.mark_participant_left("PA_a", "left", 3000) is True
    assert await store.mark_participant_left("PA_a", "left", 4000) is False  # already gone: first time kept
    present = await store.list_participants(record.conference_id, present_only=True)
    assert [p.participant_id for p in present] == ["PA_b"]
    gone = (await store.list_participants(record.conference_id))[0]
    assert (gone.left_at_ms, gone.left_reason) == (3000, "left")

    assert await store.mark_all_participants_left(record.conference_id, "conference_ended", 5000) == 1
    assert await store.list_participants(record.conference_id, present_only=True) == []
    assert len(await store.list_participants(other.conference_id, present_only=True)) == 1


async def test_participant_of_unknown_conference_is_refused(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.add_participant("PA_z", "no-such-conference", "@a:hs", "D", "todevice", {}, 1)
