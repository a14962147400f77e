"""Fixtures for the store suite: every test runs on SQLite and on a real PostgreSQL.

PostgreSQL: ``VISIO_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) is
an admin connection; each test gets a fresh ``visio_test_<random>`` database, dropped afterwards.
When PostgreSQL is unreachable the postgres tests fail if ``CI=true`` and are skipped, with the
reason shown, otherwise.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from visio_matrix.storage import Database, Store, StoreError, connect_database, mask_url, open_store

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Admin URL -> why it is unreachable, so that a missing server costs one connection attempt per run.
_unreachable: dict[str, str] = {}


def postgres_admin_url() -> str:
    return os.environ.get("VISIO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL store tests must run)", pytrace=False)
    pytest.skip(reason)


async def _connect_admin(url: str) -> Database:
    if url in _unreachable:
        _unavailable(_unreachable[url])
    try:
        return await connect_database(url)
    except StoreError as err:
        _unreachable[url] = f"PostgreSQL unreachable at {mask_url(url)}: {err.__cause__ or err}"
        _unavailable(_unreachable[url])
        raise  # not reached: skip/fail raise


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[str]:
    """URL of an empty database on the parametrised backend."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/visio.db"
        return
    admin_url = postgres_admin_url()
    admin = await _connect_admin(admin_url)
    name = f"visio_test_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A migrated store on the parametrised backend, closed after the test."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
