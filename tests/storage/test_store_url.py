"""Pure parts of storage (URLs, masking, placeholders, step numbering) and backend specifics."""

from __future__ import annotations

from pathlib import Path

import pytest

from visio_matrix.storage import (
    MIGRATIONS,
    Migration,
    StoreError,
    connect_database,
    mask_url,
    open_store,
    parse_database_url,
    sqlite_url,
)
from visio_matrix.storage.database import status_rowcount, to_qmark_numbered
from visio_matrix.storage.migrations import check_steps


@pytest.mark.parametrize(
    ("url", "backend", "target"),
    [
        ("sqlite:///var/lib/visio/visio.db", "sqlite", "/var/lib/visio/visio.db"),
        ("sqlite://:memory:", "sqlite", ":memory:"),
        ("sqlite://relative/visio.db", "sqlite", "relative/visio.db"),
        ("postgresql://u:p@db:5432/visio", "postgres", "postgresql://u:p@db:5432/visio"),
        ("postgres://u@db/visio?sslmode=require", "postgres", "postgres://u@db/visio?sslmode=require"),
    ],
)
def test_parse_database_url(url: str, backend: str, target: str) -> None:
    parsed = parse_database_url(url)
    assert (parsed.backend, parsed.target) == (backend, target)


def test_sqlite_url_from_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sqlite_url(tmp_path / "v.db") == f"sqlite://{tmp_path}/v.db"
    monkeypatch.chdir(tmp_path)
    assert parse_database_url(sqlite_url("rel.db")).target == f"{tmp_path}/rel.db"


@pytest.mark.parametrize("url", ["mysql://u:hunter2@db/x", "sqlite://", "", "/var/lib/visio.db"])
def test_unsupported_url_is_refused_without_leaking_password(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        parse_database_url(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://visio:s3cr%40t@db:5432/visio", "postgresql://visio:***@db:5432/visio"),
        ("postgresql://visio@db/visio", "postgresql://visio@db/visio"),
        ("postgresql://db:5432/visio", "postgresql://db:5432/visio"),
        (
            "postgresql://u@db/visio?password=s3cret&sslmode=require",
            "postgresql://u@db/visio?password=***&sslmode=require",
        ),
        ("postgresql://:pw@db/x", "postgresql://:***@db/x"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert parse_database_url(url).masked == masked


def test_placeholders_and_rowcounts() -> None:
    assert to_qmark_numbered("SELECT $1, $2 WHERE a = $10") == "SELECT ?1, ?2 WHERE a = ?10"
    assert [status_rowcount(s) for s in ("INSERT 0 1", "UPDATE 3", "DELETE 0", "CREATE TABLE")] == [
        1,
        3,
        0,
        0,
    ]


def test_steps_must_be_numbered_from_one_without_gaps() -> None:
    check_steps(MIGRATIONS)
    with pytest.raises(ValueError, match="numbered"):
        check_steps([*MIGRATIONS, Migration(len(MIGRATIONS) + 2, "gap", ("SELECT 1",))])
    with pytest.raises(ValueError, match="no statements"):
        check_steps([Migration(1, "empty", ())])


async def test_sqlite_in_memory_store() -> None:
    store = await open_store("sqlite://:memory:")
    try:
        assert await store.claim_event("$e", now_ms=1)
        assert not await store.claim_event("$e", now_ms=2)
    finally:
        await store.close()


async def test_sqlite_file_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    await (await open_store(f"sqlite://{tmp_path}/v.db")).close()
    db = await connect_database(f"sqlite://{tmp_path}/v.db")
    try:
        assert await db.fetchval("PRAGMA journal_mode") == "wal"
        assert await db.fetchval("PRAGMA foreign_keys") == 1
    finally:
        await db.close()


async def test_sqlite_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        await open_store(f"sqlite://{tmp_path}/missing-dir/v.db")


async def test_postgres_connect_error_masks_password() -> None:
    # Port 1 on loopback: refused at once, nothing listens there.
    with pytest.raises(StoreError) as caught:
        await open_store("postgresql://visio:hunter2@127.0.0.1:1/visio")
    assert "hunter2" not in str(caught.value)
    assert "visio:***@127.0.0.1:1" in str(caught.value)
